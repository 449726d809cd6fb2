"""Ahead-of-time compile of every Triton kernel, in every launch configuration the code uses, for sm_80
(A100) and sm_90 (H100, H200), on a machine without a GPU.

The CPU tests run the kernels under the Triton interpreter, which never compiles them: a kernel that the
interpreter runs correctly can still fail to compile for a GPU, or spill registers there. This closes the
gap in CI, in three steps.

1. Record. Every @triton.jit function of lrm_fast.kernels is swapped for a recorder, and the public ops run
   with backend="triton" on CPU tensors at the vocabularies, dtypes and options the project uses
   (`scenarios`). Each `kernel[grid](...)` that the launchers issue is recorded, its tensors reduced to
   dtype and address. Arguments, constexprs, block sizes and num_warps come from the launchers themselves,
   so the check follows them when they change. CPU tensors stand in for CUDA ones: both allocators align
   a fresh tensor to at least 16 bytes, and a view (a fused-head chunk's targets) is offset alike on both.
2. Compile. Each recorded launch goes through Triton's own launch path with warmup (`JITFunction.warmup`),
   which specialises the arguments as a launch would (dtypes, 16-byte alignment, integers equal to 1,
   64-bit integers) and calls triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32)). A
   stand-in driver supplies the target. Launches that specialise alike share one compile.
3. Report. The bundled ptxas's -v log gives registers, spilled bytes and static shared memory, to which
   the shared memory that Triton allocates at launch is added. A compile error, a spill, or a kernel that
   no scenario launched fails the check (exit status 1).

    python -m benchmarks.aot_compile [--arch 80 90] [--markdown] [--json FILE]

Run it with TRITON_INTERPRET unset, so that the kernels are compiled (not interpreted) and the launchers
pick their GPU block sizes. Compiles go to a fresh Triton cache, so that ptxas runs (and logs) every time.
"""

import argparse
import ast
import contextlib
import dataclasses
import importlib
import io
import json
import os
import pkgutil
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

ARCHS = (80, 90)
DEFAULT_NUM_WARPS = 4  # Triton's, for launches that do not pass num_warps


@dataclasses.dataclass(frozen=True)
class Pointer:
    """A tensor argument reduced to what Triton specialises a pointer on: element type and address."""

    dtype: torch.dtype
    address: int

    def data_ptr(self) -> int:
        return self.address


@dataclasses.dataclass
class Launch:
    """One `kernel[grid](**kwargs)` a launcher issued, while running `scenario`."""

    kernel: JITFunction
    grid: tuple
    kwargs: dict
    scenario: str

    def describe(self) -> str:
        """The configuration as Triton specialises it: dtype, constexprs (True flags by name, False ones
        left out), warps, 64-bit integers, and the arguments not divisible by 16."""
        params = [p for p in self.kernel.params if p.name in self.kwargs]
        pointers = [v for v in self.kwargs.values() if isinstance(v, Pointer)]
        parts = [_DTYPE_NAMES.get(pointers[0].dtype, str(pointers[0].dtype))] if pointers else []
        for p in params:
            value = self.kwargs[p.name]
            if p.is_constexpr and value is not False:
                parts.append(p.name if value is True else f"{p.name}={value}")
        parts.append(f"warps={self.kwargs.get('num_warps', DEFAULT_NUM_WARPS)}")
        runtime = {p.name: self.kwargs[p.name] for p in params if not p.is_constexpr}
        parts += [f"i64 {name}" for name, v in runtime.items() if _is_int(v) and not -(2**31) <= v < 2**31]
        unaligned = [name for name, v in runtime.items() if _specialised_unaligned(v)]
        return " ".join(parts + ([f"unaligned: {', '.join(unaligned)}"] if unaligned else []))


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _specialised_unaligned(value) -> bool:
    # Triton's rule: pointers and integers are specialised on divisibility by 16 (integers equal to 1
    # become constants); without it, loads and stores fall back to narrower accesses.
    if isinstance(value, Pointer):
        return value.address % 16 != 0
    return _is_int(value) and value != 1 and value % 16 != 0


class _Recording:
    """The launches recorded so far and the scenario running now."""

    def __init__(self):
        self.launches: list[Launch] = []
        self.scenario = ""


class _Recorder:
    """Stands in for a @triton.jit kernel: `recorder[grid](...)` records the launch and runs nothing."""

    def __init__(self, kernel: JITFunction, recording: _Recording):
        self.kernel, self.recording = kernel, recording

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            kwargs.update(zip(self.kernel.arg_names, args, strict=False))
            reduced = {k: _reduce(v) for k, v in kwargs.items()}
            self.recording.launches.append(Launch(self.kernel, tuple(grid), reduced, self.recording.scenario))

        return launch


def _reduce(value):
    return Pointer(value.dtype, value.data_ptr()) if isinstance(value, torch.Tensor) else value


def kernel_modules() -> list:
    """Every module of lrm_fast.kernels (imported)."""
    package = importlib.import_module("lrm_fast.kernels")
    names = sorted(info.name for info in pkgutil.iter_modules(package.__path__))
    return [importlib.import_module(f"{package.__name__}.{name}") for name in names]


def jit_functions(modules) -> dict[JITFunction, list[tuple[object, str]]]:
    """Each @triton.jit function of `modules`, with every (module, name) that refers to it."""
    found: dict[JITFunction, list[tuple[object, str]]] = {}
    for module in modules:
        for name, value in vars(module).items():
            if isinstance(value, JITFunction):
                found.setdefault(value, []).append((module, name))
    if not found and any(
        type(v).__name__ == "InterpretedFunction" for m in modules for v in vars(m).values()
    ):
        raise RuntimeError("the kernels were imported under TRITON_INTERPRET=1: run this without it")
    return found


def launchable(functions) -> list[JITFunction]:
    """The jit functions that no other jit function calls: the kernels, not their device helpers."""
    called = set()
    for fn in functions:
        for node in ast.walk(ast.parse(fn.src)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                callee = fn.fn.__globals__.get(node.func.id)
                if isinstance(callee, JITFunction) and callee is not fn:
                    called.add(callee)
    return [fn for fn in functions if fn not in called]


def record_launches(modules, scenarios: Iterator[tuple[str, Callable[[], None]]]) -> list[Launch]:
    """Run each scenario with every jit function of `modules` swapped for a recorder; the launches."""
    recording = _Recording()
    references = [ref for refs in jit_functions(modules).values() for ref in refs]
    originals = [getattr(module, name) for module, name in references]
    try:
        for module, name in references:
            setattr(module, name, _Recorder(getattr(module, name), recording))
        for name, run in scenarios:
            recording.scenario = name
            run()
    finally:
        for (module, name), original in zip(references, originals, strict=True):
            setattr(module, name, original)
    return recording.launches


class _TargetDriver:
    """Triton's active driver without a device: the target to compile for, nothing to launch on."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return self.target.arch  # a device id per arch: Triton caches its binder and kernels per device

    def get_current_stream(self, device=None):
        return None


@contextlib.contextmanager
def _compiling_for(arch: int, ptxas_log: io.StringIO):
    # Triton prints ptxas's -v log when asked to; the log goes to `ptxas_log`.
    previous_driver, previous_dump = driver._active, triton.knobs.nvidia.dump_ptxas_log
    driver.set_active(_TargetDriver(arch))
    triton.knobs.nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(ptxas_log):
            yield
    finally:
        driver.set_active(previous_driver)
        triton.knobs.nvidia.dump_ptxas_log = previous_dump


@dataclasses.dataclass
class Compiled:
    """One distinct compile: a kernel in one configuration for one arch, and the scenarios that use it."""

    kernel: str
    config: str
    arch: int
    scenarios: list[str]
    seconds: float
    registers: int | None = None
    spill_bytes: int | None = None  # spill stores + spill loads
    shared_bytes: int | None = None  # static (ptxas) + allocated by Triton at launch
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or bool(self.spill_bytes)


def parse_ptxas_log(log: str) -> dict:
    """Registers, spilled bytes and static shared memory from a ptxas -v log of one kernel."""
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    smem = re.search(r"(\d+) bytes smem", log)
    if registers is None or spills is None:
        raise ValueError(f"not a ptxas -v log: {log[:200]!r}")
    return {
        "registers": int(registers.group(1)),
        "spill_bytes": int(spills.group(1)) + int(spills.group(2)),
        "static_shared_bytes": int(smem.group(1)) if smem else 0,
    }


def compile_launches(launches: list[Launch], archs=ARCHS) -> list[Compiled]:
    """Compile every launch for every arch; one Compiled per distinct (kernel, specialisation, arch)."""
    results: list[Compiled] = []
    for arch in archs:
        seen: dict[object, Compiled] = {}
        for launch in launches:
            log, start = io.StringIO(), time.perf_counter()
            try:
                with _compiling_for(arch, log):
                    kernel = launch.kernel.warmup(grid=launch.grid, **launch.kwargs)
                key, error = id(kernel), None
            except Exception as exc:  # a compile failure is a finding: reported, and the check goes on
                kernel, error = None, _error_summary(exc)
                key = (launch.kernel, launch.describe(), error)
            if key not in seen:
                seconds = time.perf_counter() - start
                seen[key] = _compiled(launch, arch, kernel, log.getvalue(), seconds, error)
                results.append(seen[key])
            seen[key].scenarios.append(launch.scenario)
    return results


def _error_summary(error: Exception) -> str:
    """Where and why a compile failed, in one line. Triton chains an error in a device helper to the
    kernel calling it; the innermost error reads "at LINE:COL:", the source with a caret, the message."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines() or [""]
    source = getattr(error, "src", None)
    function = re.match(r"\s*def (\w+)", source) if isinstance(source, str) else None
    where = f"{function.group(1)} " if function else ""
    where += lines[0] if len(lines) > 1 else ""
    return f"{type(error).__name__}: {where} {lines[-1]}"[:300]


def _compiled(launch: Launch, arch: int, kernel, log: str, seconds: float, error: str | None) -> Compiled:
    row = Compiled(launch.kernel.__name__, launch.describe(), arch, [], seconds, error=error)
    if kernel is not None:
        stats = parse_ptxas_log(log)
        row.registers, row.spill_bytes = stats["registers"], stats["spill_bytes"]
        row.shared_bytes = stats["static_shared_bytes"] + kernel.metadata.shared
    return row


# What the project launches. Triton specialises V and the row strides on divisibility by 16, and the
# launchers pick BLOCK_V from V, so these vocabularies cover the distinct configurations.
VOCABS = {
    151936: "Qwen2.5 / Qwen3: the GPU benchmarks, the smoke model",
    128256: "Llama-3: the GPU benchmarks (specialises as 151936 does)",
    33001: "not a multiple of 16: the tests' unaligned vocabulary",
    512: "under one 4096-wide block: small test vocabularies",
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (group size, prompts per step) of conf/rollout, conf/trainer and conf/experiment; BLOCK_GROUPS follows
# the number of groups.
GROUPS = ((8, 8), (8, 32), (8, 64), (16, 32))
# DESIGN's benchmark shape: N * V = 2.5e9 > 2**31, so the scale kernel gets a 64-bit element count.
LARGE_N, LARGE_V = 16384, 151936


def _vectors(n: int, vocab: int) -> dict:
    """The per-token inputs of the loss ops; their values do not matter, nothing is computed."""
    return {
        "targets": torch.arange(n) % vocab,
        "old_logprobs": torch.zeros(n),
        "advantages": torch.tensor([1.0, -1.0]).repeat((n + 1) // 2)[:n],
        "weights": torch.full((n,), 1.0 / n),
    }


def _token_logprobs(vocab: int, dtype: torch.dtype) -> None:
    from lrm_fast.kernels import token_logprobs

    logits = torch.empty(4, vocab, dtype=dtype, requires_grad=True)
    token_logprobs(logits, _vectors(4, vocab)["targets"], backend="triton").sum().backward()


def _grpo_loss(vocab: int, dtype: torch.dtype, entropy_coef: float, n: int = 4) -> None:
    from lrm_fast.kernels import grpo_loss

    # torch.empty only reserves the pages: even the 5 GB logits of the large case cost no memory here.
    logits = torch.empty(n, vocab, dtype=dtype, requires_grad=True)
    v = _vectors(n, vocab)
    loss, _ = grpo_loss(logits, *v.values(), entropy_coef=entropy_coef, backend="triton")
    loss.backward(torch.tensor(2.0))  # grad_output != 1: the stored gradient is scaled


def _fused_head(vocab: int, dtype: torch.dtype, entropy_coef: float) -> None:
    from lrm_fast.kernels import grpo_loss_from_hidden

    hidden = torch.zeros(6, 64, dtype=dtype, requires_grad=True)
    weight = torch.zeros(vocab, 64, dtype=dtype, requires_grad=True)
    v = _vectors(6, vocab)
    # Chunks of 3 rows: the second chunk's targets start 24 bytes in, not 16-aligned, as do the later
    # chunks at the default chunk size (883 rows at V=151936).
    loss, _ = grpo_loss_from_hidden(
        hidden, weight, *v.values(), entropy_coef=entropy_coef, chunk_size=3, backend="triton"
    )
    loss.backward(torch.tensor(2.0))


def _group_advantages(group_size: int, groups: int, scale: str) -> None:
    from lrm_fast.kernels import group_advantages

    group_advantages(torch.zeros(group_size * groups), group_size=group_size, scale=scale, backend="triton")


def scenarios() -> Iterator[tuple[str, Callable[[], None]]]:
    """(name, call) of every use of the ops on the GPU: each dtype, vocabulary and option that changes
    how the launchers or Triton's specialisation configure a kernel."""
    for dtype_name, dtype in DTYPES.items():
        for vocab in VOCABS:
            yield f"token_logprobs {dtype_name} V={vocab}", lambda v=vocab, d=dtype: _token_logprobs(v, d)
            for coef in (0.0, 0.01):
                name = f"grpo_loss {dtype_name} V={vocab} entropy_coef={coef}"
                yield name, lambda v=vocab, d=dtype, c=coef: _grpo_loss(v, d, c)
        for vocab in (151936, 33001):
            for coef in (0.0, 0.01):
                name = f"grpo_loss_from_hidden {dtype_name} V={vocab} entropy_coef={coef}"
                yield name, lambda v=vocab, d=dtype, c=coef: _fused_head(v, d, c)
    name = f"grpo_loss bf16 N={LARGE_N} V={LARGE_V}"
    yield name, lambda: _grpo_loss(LARGE_V, torch.bfloat16, 0.0, n=LARGE_N)
    for group_size, groups in GROUPS:
        for scale in ("std", "none"):
            name = f"group_advantages G={group_size} groups={groups} scale={scale}"
            yield name, lambda g=group_size, b=groups, s=scale: _group_advantages(g, b, s)


def check(modules, runs, archs=ARCHS) -> tuple[list[Compiled], list[str], int]:
    """Record the launches of `runs` and compile them: (compiles, kernels never launched, launches)."""
    launches = record_launches(modules, runs)
    launched = {launch.kernel for launch in launches}
    missed = [fn.__name__ for fn in launchable(jit_functions(modules)) if fn not in launched]
    return compile_launches(launches, archs), missed, len(launches)


def failures(rows: list[Compiled], missed: list[str]) -> list[str]:
    """One line per finding that fails the check, naming the kernel, its configuration and the arch."""
    lines = []
    for row in (row for row in rows if row.failed):
        problem = row.error or f"spills {row.spill_bytes} bytes"
        lines.append(f"FAILED sm_{row.arch} {row.kernel} [{row.config}]: {problem}")
    lines += [f"FAILED {name}: no scenario launches it (add one to scenarios())" for name in missed]
    return lines


def format_table(rows: list[Compiled], archs=ARCHS, markdown: bool = False) -> str:
    """One line per kernel configuration: registers, spilled bytes and shared memory on each arch."""
    header = ["kernel", "configuration", "launches"]
    for arch in archs:
        header += [f"sm_{arch} regs", "spill B", "smem B"]
    lines, index = [header], {}
    for row in sorted(rows, key=lambda r: r.kernel):  # stable: each kernel's rows in launch order
        key = (row.kernel, row.config)
        if key not in index:
            index[key] = len(lines)
            lines.append([row.kernel, row.config, str(len(row.scenarios))] + ["-"] * 3 * len(archs))
        at = 3 + 3 * archs.index(row.arch)
        cells = [row.registers, row.spill_bytes, row.shared_bytes] if row.error is None else ["ERROR"] * 3
        lines[index[key]][at : at + 3] = [str(c) for c in cells]
    if markdown:
        rule = ["---"] * len(header)
        return "\n".join("| " + " | ".join(line) + " |" for line in [header, rule, *lines[1:]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--json", help="write every compile (with the scenarios using it) here")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 is set: the kernels would be interpreted, not compiled")
    cache = tempfile.mkdtemp(prefix="aot_compile_cache.")
    os.environ["TRITON_CACHE_DIR"] = cache
    start = time.perf_counter()
    try:
        rows, missed, launches = check(kernel_modules(), scenarios(), tuple(args.arch))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(format_table(rows, tuple(args.arch), markdown=args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(row) for row in rows], f, indent=1)
    found = failures(rows, missed)
    for line in found:
        print(line, file=sys.stderr)
    print(
        f"{launches} launches, {len(rows)} compiles for sm_{', sm_'.join(map(str, args.arch))} "
        f"(triton {triton.__version__}) in {time.perf_counter() - start:.0f} s: "
        f"{f'FAILED, {len(found)} finding(s)' if found else 'ok'}"
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
