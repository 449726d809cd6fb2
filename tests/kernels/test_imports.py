"""kernels/ is installed as lrm_fast.kernels from its own folder, which import-linter does not walk: this
checks its one rule, that it imports only torch, triton, the standard library and its own modules."""

import ast
import pathlib
import sys

KERNELS = pathlib.Path(__file__).resolve().parents[2] / "kernels"
ALLOWED = {"torch", "triton"} | set(sys.stdlib_module_names)


def imported_roots(path: pathlib.Path) -> set[str]:
    """Top-level names of every absolute import in a file (relative imports are the folder's own)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_kernels_import_only_torch_triton_and_the_standard_library():
    files = sorted(KERNELS.glob("*.py"))
    assert len(files) > 5
    outside = {path.name: sorted(imported_roots(path) - ALLOWED) for path in files}
    assert {name: roots for name, roots in outside.items() if roots} == {}


def test_the_check_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nfrom lrm_fast.config import LossConfig\nfrom . import checks\n")
    assert imported_roots(bad) - ALLOWED == {"numpy", "lrm_fast"}
