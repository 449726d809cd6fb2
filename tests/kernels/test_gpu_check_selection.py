"""gpu_check.sh's choice of test modules (benchmarks/gpu_tests.py) and its import check
(benchmarks/preflight.py): a module importing a package the host lacks is left out, and named."""

import sys
import uuid

from benchmarks import gpu_tests, preflight

GPU_TEST = """
import pytest
{imports}


@pytest.mark.gpu
def test_on_the_card():
    pass
"""


def test_only_gpu_modules_that_import_here_are_selected(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "path", list(sys.path))  # selection puts the test folders on sys.path
    tag = uuid.uuid4().hex[:8]  # module names unseen by this process
    folder = tmp_path / "tests" / "sub"
    folder.mkdir(parents=True)
    # A helper beside the tests, as tests/trainer_fixtures.py is: found through the folders above.
    (tmp_path / "tests" / f"fixtures_{tag}.py").write_text("VALUE = 1\n")
    modules = {
        "ok": GPU_TEST.format(imports=f"from fixtures_{tag} import VALUE"),
        "absent": GPU_TEST.format(imports="import package_the_host_lacks"),
        "raises": GPU_TEST.format(imports="raise RuntimeError('a real bug, for pytest to report')"),
        # json is here: a module missing inside it is a bug in the test, not something the host lacks.
        "renamed": GPU_TEST.format(imports="import json.no_such_module"),
        "cpu_only": "def test_on_cpu():\n    pass\n",
    }
    for name, source in modules.items():
        (folder / f"test_{name}_{tag}.py").write_text(source)

    selected = gpu_tests.select([str(tmp_path / "tests")], tmp_path)

    kept = [f"test_ok_{tag}.py", f"test_raises_{tag}.py", f"test_renamed_{tag}.py"]
    assert [path.name for path in selected] == kept
    absent = f"tests/sub/test_absent_{tag}.py"
    assert capsys.readouterr().err.splitlines() == [
        f"left out {absent}: imports package_the_host_lacks, absent here"
    ]


def test_preflight_names_the_package_a_stage_misses(capsys):
    assert preflight.main(["--imports", "json", "package_the_host_lacks.sub"]) == 2
    out, err = capsys.readouterr()
    assert "json: ok" in out
    assert "MISSING: package_the_host_lacks.sub imports package_the_host_lacks" in err
