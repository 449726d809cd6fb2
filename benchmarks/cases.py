"""Shape presets, providers, inputs and the measuring loop shared by the kernel benchmarks.

A case is (preset, provider, mode):

  presets    real vocabularies in bf16 on GPU (Qwen2.5 V=151936, Llama-3 V=128256; marked `gpu`, skipped
             without CUDA) and small fp32 shapes on CPU, whose ids contain "cpu" so that `-k cpu` picks them.
  providers  triton (our kernels), torch (our chunked torch backend), naive (kernels.reference, eager),
             compiled (torch.compile of kernels.reference), liger (Liger-Kernel's Triton GRPO loss).
  modes      forward (a training forward: logits require grad), backward (its forward runs untimed in
             setup), full (forward + backward).

Each case measures its peak memory once (after a warm-up call where the first call compiles), then
times `rounds` calls through pytest-benchmark's pedantic mode (CUDA is synchronised inside the timed call).
Everything a round leaves behind (gradient, output and its graph) is dropped in the next round's untimed
setup, and the test's end frees the rest. extra_info gets the floor bytes (forward reads the logits once;
backward reads them and writes the gradient; full: two reads and one write), the GB/s achieved over the
median time, and the peak memory. With --benchmark-disable every case runs its calls once, untimed.
"""

import functools
import gc
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from lrm_fast.kernels import reference, token_logprobs

from . import report
from .memory import peak_memory_bytes

MODES = ("full", "forward", "backward")
CPU_PROVIDERS = ("torch", "naive", "compiled")
# Our kernel and its competitors first: the check that runs out of time still measures them.
GPU_PROVIDERS = ("triton", "liger", "compiled", "naive", "torch")
TRITON_PROVIDERS = ("triton", "liger")
# Their first call compiles (Triton JIT and autotuning, torch.compile): it must not be the measured one.
JIT_PROVIDERS = ("triton", "liger", "compiled")
LIGER_MISSING = "liger-kernel is not installed (optional extra: pip install -e '.[liger]')"


@dataclass(frozen=True)
class Preset:
    name: str  # readable test id
    n: int  # packed response tokens
    vocab: int
    dtype: torch.dtype
    device: str
    rounds: int  # timed calls; the table reports their median
    providers: tuple[str, ...]
    measure_only: bool = False  # too slow for a test pass: runs only under --benchmark-only


LOGITS_PRESETS = (
    # The Triton interpreter pays per program and per block: on CPU our kernels (and Liger's) run here only.
    Preset("cpu-n16-v4096-fp32", 16, 4096, torch.float32, "cpu", rounds=3, providers=TRITON_PROVIDERS),
    # The CPU shape every test pass runs once (small: the pass has about a minute on 2 cores).
    Preset("cpu-n256-v32000-fp32", 256, 32000, torch.float32, "cpu", rounds=5, providers=CPU_PROVIDERS),
    Preset("cpu-n1024-v32000-fp32", 1024, 32000, torch.float32, "cpu", 5, CPU_PROVIDERS, measure_only=True),
    # DESIGN's CPU target: the torch backend within 1.2x of naive's time at a third of its peak memory.
    Preset("cpu-n8192-v32000-fp32", 8192, 32000, torch.float32, "cpu", 3, CPU_PROVIDERS, measure_only=True),
    # DESIGN's GPU target first, so that a check that runs out of time has measured it.
    Preset("qwen2.5-n16384-v151936-bf16", 16384, 151936, torch.bfloat16, "cuda", 10, GPU_PROVIDERS),
    Preset("qwen2.5-n4096-v151936-bf16", 4096, 151936, torch.bfloat16, "cuda", 10, GPU_PROVIDERS),
    Preset("llama3-n8192-v128256-bf16", 8192, 128256, torch.bfloat16, "cuda", 10, GPU_PROVIDERS),
    # One vocabulary short of qwen2.5-n4096: a V not divisible by 16 makes both row passes fall back to
    # 2-byte accesses and up to 94 registers (benchmarks/aot_compile.py). Our kernel only: its time
    # against qwen2.5-n4096's is the cost of an unaligned vocabulary.
    Preset("qwen2.5-n4096-v151935-bf16", 4096, 151935, torch.bfloat16, "cuda", 10, ("triton",)),
)


def logits_cases(exclude: tuple[str, ...] = ()) -> list:
    """pytest params (preset, provider, mode), with ids like cpu-n1024-v32000-fp32-torch-full."""
    return [
        pytest.param(
            preset, provider, mode, id=f"{preset.name}-{provider}-{mode}", marks=case_marks(preset, provider)
        )
        for preset in LOGITS_PRESETS
        for provider in preset.providers
        if provider not in exclude
        for mode in MODES
    ]


def case_marks(preset, provider: str) -> list:
    """gpu presets are marked `gpu` and skipped without CUDA; other skips say what is missing."""
    skipif = pytest.mark.skipif
    marks = []
    if preset.device == "cuda":
        marks += [pytest.mark.gpu, skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
    elif provider in TRITON_PROVIDERS:
        no_interpreter = os.environ.get("TRITON_INTERPRET") != "1"
        marks.append(skipif(no_interpreter, reason="Triton on CPU tensors needs TRITON_INTERPRET=1"))
    if provider == "liger":
        marks.append(skipif(importlib.util.find_spec("liger_kernel") is None, reason=LIGER_MISSING))
    if getattr(preset, "measure_only", False):
        # A string condition is evaluated by pytest with `config` in scope.
        only = "not config.getoption('benchmark_only')"
        marks.append(skipif(only, reason="measurement preset: runs under --benchmark-only"))
    return marks


@dataclass
class LogitsInputs:
    logits: torch.Tensor  # [N, V] leaf that requires grad
    targets: torch.Tensor  # [N] int64
    old_logprobs: torch.Tensor  # [N] fp32
    advantages: torch.Tensor  # [N] fp32, constant over each sequence
    weights: torch.Tensor  # [N] fp32 token mean: 1 / N
    seq_len: int  # tokens per sequence


def make_logits_inputs(preset: Preset, seed: int = 0) -> LogitsInputs:
    n, vocab, device = preset.n, preset.vocab, preset.device
    g = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g, device=device, dtype=preset.dtype)
    targets = torch.randint(0, vocab, (n,), generator=g, device=device)
    # Old log-probs a little off the current ones, as after an optimizer step: a few percent of the tokens
    # are clipped. (Clipped tokens have a zero gradient row, which our Triton pass 2 writes without reading
    # the logits, so a larger clip fraction would flatter it.)
    with torch.no_grad():
        logp = token_logprobs(logits, targets)
    old_logprobs = logp + 0.1 * torch.randn(n, generator=g, device=device)
    seq_len = min(n, 1024)
    advantages = torch.randn(n // seq_len, generator=g, device=device).repeat_interleave(seq_len)
    weights = torch.full((n,), 1.0 / n, device=device)
    return LogitsInputs(logits.requires_grad_(), targets, old_logprobs, advantages, weights, seq_len)


def logits_floor_bytes(preset: Preset, mode: str) -> int:
    """Fewest bytes any implementation moves: [N, V] logits read once per pass, the gradient written once."""
    passes = {"forward": 1, "backward": 2, "full": 3}[mode]
    return passes * preset.n * preset.vocab * preset.dtype.itemsize


@functools.cache
def _compiled(name: str):
    return torch.compile(getattr(reference, name))


def compiled_reference(name: str, dynamic_dim0: bool = True) -> Callable:
    """torch.compile of reference.<name>, with the token dimension dynamic (as a trainer sees it: N changes
    every micro-batch, V never), so that one compilation serves every N of a vocabulary."""
    fn = _compiled(name)

    def call(*args, **kwargs):
        if dynamic_dim0:
            for arg in (*args, *kwargs.values()):
                if isinstance(arg, torch.Tensor):
                    torch._dynamo.mark_dynamic(arg, 0)
        return fn(*args, **kwargs)

    return call


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mode_calls(mode: str, forward: Callable, backward: Callable, leaf: torch.Tensor):
    """(setup, target) for benchmark.pedantic. forward() returns what backward(out) differentiates; setup
    drops the previous round's gradient and output outside the timed call."""
    device = leaf.device
    kept = []  # the forward mode's output, alive until the next setup so that freeing it is not timed

    def setup():
        leaf.grad = None
        kept.clear()
        args = (forward(),) if mode == "backward" else ()
        synchronize(device)
        return args, {}

    def target(*args):
        if mode == "forward":
            kept.append(forward())
        elif mode == "backward":
            backward(*args)
        else:
            backward(forward())
        synchronize(device)

    return setup, target


def measure(benchmark, results: list, *, op, preset, provider, mode, setup, target, floor_bytes: int) -> None:
    """Peak memory of one call, then the timed rounds; fills benchmark.extra_info and a row of `results`."""
    device = torch.device(preset.device)
    if benchmark.enabled and provider in JIT_PROVIDERS:
        _or_skip_oom(lambda: target(*setup()[0]), provider, preset)
    peak = _or_skip_oom(lambda: _peak(setup, target, device), provider, preset)
    _or_skip_oom(lambda: benchmark.pedantic(target, setup=setup, rounds=preset.rounds), provider, preset)
    median = benchmark.stats.stats.median if benchmark.stats else None
    info = {
        "op": op,
        "shape": preset.name,
        "provider": provider,
        "mode": mode,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "floor_bytes": floor_bytes,
        "gbps": floor_bytes / median / 1e9 if median else None,
        "peak_mem_bytes": peak,
    }
    benchmark.extra_info.update(info)
    results.append(report.row(info, median))


def _peak(setup, target, device) -> int:
    args, _ = setup()
    return peak_memory_bytes(lambda: target(*args), device)


def _or_skip_oom(fn: Callable, provider: str, preset):
    """fn(), or a skip when it runs out of memory (the naive reference at the largest GPU shapes)."""
    try:
        return fn()
    except torch.OutOfMemoryError:
        pass
    # Outside the except block, so that the traceback no longer pins the tensors being freed.
    release_memory()
    pytest.skip(f"{provider} runs out of memory at {preset.name}")


def release_memory() -> None:
    """Hand freed CUDA memory back, so that the next case starts from an empty cache. (A CPU tensor is
    returned to the system when its last reference goes, and a full gc.collect costs ~0.3 s here.)"""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
