"""The layering of docs/ARCHITECTURE.md beyond what import-linter checks: nothing below the entry points
needs Hydra or OmegaConf at import time (a GPU host running benchmarks/gpu_check.sh may lack both)."""

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


def test_modules_below_the_entry_points_import_without_hydra_and_omegaconf():
    assert "lrm_fast.training.update" in MODULES and "lrm_fast.levers.regimes" in MODULES
    # None in sys.modules makes any import of those names fail, as if they were not installed.
    script = (
        "import importlib, sys\n"
        "for name in ('hydra', 'omegaconf'):\n"
        "    sys.modules[name] = None\n"
        f"for module in {MODULES!r}:\n"
        "    importlib.import_module(module)\n"
        "print('imported', len(sys.modules))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported" in result.stdout
