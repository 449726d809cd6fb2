"""The layering of docs/ARCHITECTURE.md beyond what import-linter checks: nothing below the entry points
needs Hydra or OmegaConf at import time, and the loss path, the levers, rollout and batching import
without `datasets` (a GPU host running benchmarks/gpu_check.sh may lack all three)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lrm_fast"

# Every module below lrm_fast.cli, plus the kernels (installed as lrm_fast.kernels).
MODULES = [
    *sorted(
        "lrm_fast." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] not in ("cli", "__init__.py")
    ),
    "lrm_fast.kernels",
]
# What the GPU check and the loss path import: `datasets` is read only inside lrm_fast.data.loading's
# functions, so none of these may need it at import time.
WITHOUT_DATASETS = [
    "lrm_fast.kernels",
    "lrm_fast.training.update",
    *(m for m in MODULES if m.startswith(("lrm_fast.levers", "lrm_fast.rollout", "lrm_fast.batching"))),
]


def _import_all_without(blocked: tuple[str, ...], modules: list[str]) -> None:
    # None in sys.modules makes any import of those names fail, as if they were not installed.
    script = (
        "import importlib, sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        "print('imported', len(sys.modules))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported" in result.stdout


def test_modules_below_the_entry_points_import_without_hydra_and_omegaconf():
    assert "lrm_fast.training.update" in MODULES and "lrm_fast.levers.regimes" in MODULES
    _import_all_without(("hydra", "omegaconf"), MODULES)


def test_loss_levers_rollout_and_batching_import_without_datasets():
    assert {"lrm_fast.levers.injection", "lrm_fast.rollout.hf", "lrm_fast.batching.samples"} <= set(
        WITHOUT_DATASETS
    )
    _import_all_without(("datasets",), WITHOUT_DATASETS)
