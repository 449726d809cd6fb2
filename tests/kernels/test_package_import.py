"""The top-level name `kernels` belongs to the Hugging Face package that transformers imports; the checkout's
kernels/ folder is lrm_fast.kernels. With the checkout's root on sys.path (pytest, `python -m`, torchrun),
importing `kernels` must give the installed package, or, where none is installed, an empty placeholder
that neither breaks transformers' probe nor registers our custom ops a second time."""

import importlib.machinery
import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest
from trainer_fixtures import QUICK

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Custom ops and their registrations before and after the top-level import: a second registration under
# the same name would free the first, which lrm_fast.kernels still holds.
REGISTRATIONS = """
import torch._library.custom_ops as custom_ops
import lrm_fast.kernels
from lrm_fast.kernels import grpo_loss
ops = sorted(name for name in custom_ops.OPDEF_TO_LIB if name.startswith("lrm_fast::"))
libraries = {name: custom_ops.OPDEF_TO_LIB[name] for name in ops}
"""
AFTER = """
import torch
print("ops", ops)
print("registrations kept", all(custom_ops.OPDEF_TO_LIB[name] is libraries[name] for name in ops))
logits = torch.randn(6, 40, requires_grad=True)
loss, _ = grpo_loss(logits, torch.arange(6), torch.full((6,), -3.0), torch.randn(6), torch.full((6,), 1 / 6),
                    backend="triton")
loss.backward()
print("loss finite", bool(torch.isfinite(loss)) and bool(torch.isfinite(logits.grad).all()))
"""


def _installed_kernels():
    path = [p for p in sys.path if pathlib.Path(p or os.curdir).resolve() != ROOT]
    return importlib.machinery.PathFinder.find_spec("kernels", path)


def _python(args, env=None, timeout=300):
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1"), **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _assert_ops_untouched(stdout):
    assert "'lrm_fast::softmax_stats'" in stdout
    assert "'lrm_fast::softmax_grad'" in stdout
    assert "'lrm_fast::scale_'" in stdout
    assert "registrations kept True" in stdout
    assert "loss finite True" in stdout


def test_top_level_kernels_is_the_installed_package():
    installed = _installed_kernels()
    if installed is None:
        pytest.skip("the Hugging Face `kernels` package is not installed here (its absence is tested below)")
    script = (
        REGISTRATIONS
        + "import kernels\n"
        + "import transformers.integrations.hub_kernels\n"
        + "from transformers.utils.import_utils import is_kernels_available\n"
        + "print('file', kernels.__file__)\n"
        + "print('hub kernels', is_kernels_available())\n"
        + AFTER
    )
    result = _python(["-c", script])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"file {installed.origin}\n" in result.stdout
    assert "hub kernels True" in result.stdout
    _assert_ops_untouched(result.stdout)


def _site_packages_without_kernels(overlay: pathlib.Path) -> pathlib.Path:
    """A site directory with every installed distribution except the Hugging Face `kernels`."""
    site_packages = pathlib.Path(sysconfig.get_paths()["purelib"])
    overlay.mkdir()
    for entry in site_packages.iterdir():
        if entry.name != "kernels" and not entry.name.startswith("kernels-"):
            (overlay / entry.name).symlink_to(entry)
    return overlay


def test_without_the_installed_package_the_name_is_an_empty_placeholder(tmp_path):
    overlay = _site_packages_without_kernels(tmp_path / "site")
    script = (
        f"import site; site.addsitedir({str(overlay)!r})\n"
        + REGISTRATIONS
        + "import kernels\n"
        + "import transformers.integrations.hub_kernels\n"
        + "from transformers.utils.import_utils import is_kernels_available\n"
        + "print('file', kernels.__file__, kernels.__path__)\n"
        + "print('hub kernels', is_kernels_available())\n"
        + "try:\n"
        + "    import kernels.grpo_loss\n"
        + "except ModuleNotFoundError:\n"
        + "    print('no submodules')\n"
        + AFTER
    )
    result = _python(["-S", "-c", script])  # -S: the site directory is the overlay alone
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"file {ROOT / 'kernels' / '__init__.py'} []" in result.stdout
    assert "hub kernels False" in result.stdout
    assert "no submodules" in result.stdout
    _assert_ops_untouched(result.stdout)


# Two steps of the embedded default with a 40-step cold start: seconds, and every stage of a run.
TWO_STEPS = [*QUICK, "trainer.steps=2"]


@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param([], id="python-m"),
        pytest.param(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"], id="torchrun-2"),
    ],
)
def test_train_launches_from_the_checkout_root(launcher, tmp_path):
    env = {"LRM_FAST_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    run = tmp_path / "run"
    result = _python(
        [*launcher, "-m", "lrm_fast.cli.train", *TWO_STEPS, f"hydra.run.dir={run}"], env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "summary.json").exists()
