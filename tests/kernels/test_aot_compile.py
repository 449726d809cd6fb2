"""The ahead-of-time compile check (benchmarks/aot_compile.py) on kernels made to pass or fail it.

The check itself runs over every kernel of the project in .ci/run (`python -m benchmarks.aot_compile`);
these tests show that it catches what it is for: a kernel that the interpreter runs correctly but the
compiler rejects, a kernel that no scenario launches, and a spill.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import uuid

import pytest
import torch

from benchmarks.aot_compile import Compiled, failures, parse_ptxas_log

ROOT = pathlib.Path(__file__).resolve().parents[2]

# A module-level float is a plain Python value to the interpreter; the compiler only reads globals that
# are tl.constexpr, so `_double` is fine under TRITON_INTERPRET=1 and fails to compile for any GPU.
KERNELS = """
import triton
import triton.language as tl

FACTOR = 2.0


@triton.jit
def _times(x, factor):
    return x * factor


@triton.jit
def _scale_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(x_ptr + offs, _times(x, 2.0), mask=offs < n)


@triton.jit
def _double_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(x_ptr + offs, x * FACTOR, mask=offs < n)


def scale(x):
    _scale_kernel[(1,)](x_ptr=x, n=x.numel(), BLOCK=triton.next_power_of_2(x.numel()))


def double(x):
    _double_kernel[(1,)](x_ptr=x, n=x.numel(), BLOCK=triton.next_power_of_2(x.numel()))


@triton.jit
def _unused_kernel(x_ptr):
    tl.store(x_ptr, 0.0)
"""

# Runs the check over both launchers for sm_90 and prints what it found, as JSON.
CHECK = """
import dataclasses, json, torch
import sample_kernels as m
from benchmarks.aot_compile import check, failures, jit_functions, launchable

runs = [("scale", lambda: m.scale(torch.zeros(5))), ("double", lambda: m.double(torch.zeros(5)))]
rows, missed, launches = check([m], iter(runs), archs=(90,))
print(json.dumps({
    "rows": [dataclasses.asdict(r) for r in rows],
    "launchable": sorted(fn.__name__ for fn in launchable(jit_functions([m]))),
    "launches": launches,
    "failures": failures(rows, missed),
}))
"""


def _import(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"sample_kernels_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs the Triton interpreter")
def test_a_kernel_the_interpreter_runs_but_the_compiler_rejects_fails(tmp_path):
    (tmp_path / "sample_kernels.py").write_text(KERNELS)
    interpreted = _import(tmp_path / "sample_kernels.py")
    x = torch.arange(5.0)
    interpreted.double(x)
    torch.testing.assert_close(x, torch.arange(5.0) * 2)  # the interpreter runs it, and right

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")])
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")  # a fresh cache: ptxas runs and logs
    run = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    rows = {row["kernel"]: row for row in found["rows"]}
    # _times is a device helper, not a kernel; _unused_kernel is one that nothing launches.
    assert found["launchable"] == ["_double_kernel", "_scale_kernel", "_unused_kernel"]
    assert found["launches"] == 2 and set(rows) == {"_double_kernel", "_scale_kernel"}
    assert rows["_scale_kernel"]["error"] is None and rows["_scale_kernel"]["registers"] > 0
    assert rows["_scale_kernel"]["spill_bytes"] == 0
    assert "Cannot access global variable FACTOR" in rows["_double_kernel"]["error"]
    assert rows["_double_kernel"]["scenarios"] == ["double"]
    # What fails the check, each naming the kernel: the compile error, and the kernel never launched.
    double, unused = found["failures"]
    assert double.startswith("FAILED sm_90 _double_kernel [fp32 BLOCK=8 warps=4 unaligned: n]: ")
    assert "Cannot access global variable FACTOR" in double
    assert unused == "FAILED _unused_kernel: no scenario launches it (add one to scenarios())"


PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_softmax_grad_kernel' for 'sm_90a'
ptxas info    : Function properties for _softmax_grad_kernel
    {stack} bytes stack frame, {stores} bytes spill stores, {loads} bytes spill loads
ptxas info    : Used {regs} registers, used 0 barriers{smem}
"""


def test_ptxas_log_gives_registers_spills_and_shared_memory():
    clean = PTXAS_LOG.format(stack=0, stores=0, loads=0, regs=94, smem="")
    assert parse_ptxas_log(clean) == {"registers": 94, "spill_bytes": 0, "static_shared_bytes": 0}
    spilled = PTXAS_LOG.format(stack=24, stores=16, loads=8, regs=255, smem=", 32 bytes smem")
    assert parse_ptxas_log(spilled) == {"registers": 255, "spill_bytes": 24, "static_shared_bytes": 32}


def test_a_spill_or_an_error_fails_the_check():
    clean = Compiled("_k", "fp32", 90, ["s"], 0.1, registers=40, spill_bytes=0, shared_bytes=0)
    spilled = Compiled("_k", "bf16", 80, ["s"], 0.1, registers=255, spill_bytes=8, shared_bytes=0)
    broken = Compiled("_k", "fp16", 90, ["s"], 0.1, error="CompilationError: at 1:2: ...")
    assert not clean.failed and spilled.failed and broken.failed
    assert failures([clean, spilled, broken], missed=[]) == [
        "FAILED sm_80 _k [bf16]: spills 8 bytes",
        "FAILED sm_90 _k [fp16]: CompilationError: at 1:2: ...",
    ]


def test_a_log_that_is_not_from_ptxas_is_refused():
    with pytest.raises(ValueError, match="not a ptxas -v log"):
        parse_ptxas_log("error: something else\n")
