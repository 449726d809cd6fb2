"""grpo_loss_from_hidden benchmarks: LM head + GRPO loss from [N, H] hidden states, forward + backward.

    pytest benchmarks/bench_fused_head.py --benchmark-only -k cpu

Providers, all computing the same loss (grpo_loss's options as in bench_grpo_loss.py: temperature 1,
clip 0.2, token mean, old log-probs a little off the current ones, one advantage per sequence):

  torch / triton  ours, grpo_loss_from_hidden with that backend's row passes (chunks of tokens, gradient
                  in the forward, zero-weight tokens dropped before the head);
  logits          the unfused path: logits = hidden @ weight.T, then grpo_loss (torch backend on CPU,
                  triton on GPU), autograd through the matmul;
  liger           Liger-Kernel's LigerFusedLinearGRPOLoss (chunks of one sequence, logits recomputed
                  in its backward) with loss_type="bnpo" (sum over tokens / number of tokens), beta=0;
                  its loss math is torch.compile'd on GPU, eager on CPU (compiling only pays off there).

test_fused_head_ratio_level times ours at the token and the sequence level (GSPO) side by side, and
Liger's importance_sampling_level="sequence": a sequence spans our chunks, so at the sequence level ours
computes each chunk's logits twice (4 matmuls instead of 3), where Liger's chunks are whole sequences.

Floor: the fewest bytes any implementation moves, hidden and weight read once and their gradients
written once. The op is matmul-bound (three [N, V, H] matmuls, 6*N*V*H flops, for ours and the logits
path; Liger recomputes the logits: four), so extra_info also gets "tflops" over those 6*N*V*H flops.
"""

from dataclasses import dataclass

import pytest
import torch

from lrm_fast.kernels import grpo_loss, grpo_loss_from_hidden, token_logprobs

from .cases import case_marks, measure, synchronize

OPTIONS = {"temperature": 1.0, "clip_low": 0.2, "clip_high": 0.2}


@dataclass(frozen=True)
class HeadPreset:
    name: str  # readable test id
    n: int  # packed response tokens
    hidden: int  # H
    vocab: int
    dtype: torch.dtype
    device: str
    rounds: int  # timed calls; the table reports their median
    providers: tuple[str, ...]
    measure_only: bool = False  # too slow for a test pass: runs only under --benchmark-only


CPU_PROVIDERS = ("torch", "logits", "liger")
# Ours first, Liger (whose first call torch.compiles) last: a check that runs out of time still has ours.
GPU_PROVIDERS = ("triton", "logits", "liger")
BF16 = torch.bfloat16
PRESETS = (
    # The Triton row passes under the interpreter: shows the path works, times nothing useful.
    HeadPreset("cpu-n16-h64-v4096-fp32", 16, 64, 4096, torch.float32, "cpu", 3, ("triton",)),
    # The CPU shape every test pass runs once (a few seconds on 2 cores).
    HeadPreset("cpu-n256-h256-v32000-fp32", 256, 256, 32000, torch.float32, "cpu", 5, CPU_PROVIDERS),
    # The memory test's shape (tests/kernels/test_fused_head.py): logits 524 MB in fp32.
    HeadPreset("cpu-n4096-h512-v32000-fp32", 4096, 512, 32000, torch.float32, "cpu", 3, CPU_PROVIDERS, True),
    # Qwen2.5-1.5B's head (H=1536) at 16k response tokens: logits 5 GB in bf16, their gradient as much.
    HeadPreset("qwen2.5-n16384-h1536-v151936-bf16", 16384, 1536, 151936, BF16, "cuda", 5, GPU_PROVIDERS),
    # Llama-3-8B's head (H=4096), where the matmuls weigh most.
    HeadPreset("llama3-n8192-h4096-v128256-bf16", 8192, 4096, 128256, BF16, "cuda", 5, GPU_PROVIDERS),
)


@dataclass
class HeadInputs:
    hidden: torch.Tensor  # [N, H] leaf that requires grad
    weight: torch.Tensor  # [V, H] leaf that requires grad
    targets: torch.Tensor  # [N] int64
    old_logprobs: torch.Tensor  # [N] fp32
    advantages: torch.Tensor  # [N] fp32, constant over each sequence
    weights: torch.Tensor  # [N] fp32 token mean: 1 / N
    seq_len: int  # tokens per sequence


def make_head_inputs(preset: HeadPreset, seed: int = 0) -> HeadInputs:
    n, h, vocab, device = preset.n, preset.hidden, preset.vocab, preset.device
    g = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, device=device, dtype=preset.dtype)
    # Logits with a standard deviation of about 1, like a trained head's.
    weight = (torch.randn(vocab, h, generator=g, device=device) / h**0.5).to(preset.dtype)
    targets = torch.randint(0, vocab, (n,), generator=g, device=device)
    with torch.no_grad():  # in chunks: the [N, V] logits are what this op avoids
        logp = torch.cat(
            [
                token_logprobs(x @ weight.T, t)
                for x, t in zip(hidden.split(1024), targets.split(1024), strict=True)
            ]
        )
    old_logprobs = logp + 0.1 * torch.randn(n, generator=g, device=device)
    seq_len = min(n, 1024)
    advantages = torch.randn(n // seq_len, generator=g, device=device).repeat_interleave(seq_len)
    weights = torch.full((n,), 1.0 / n, device=device)
    return HeadInputs(
        hidden.requires_grad_(), weight.requires_grad_(), targets, old_logprobs, advantages, weights, seq_len
    )


def _forward(provider: str, inputs: HeadInputs, extra: dict | None = None):
    """A call returning the scalar loss (differentiable in inputs.hidden and inputs.weight); `extra`
    options go to ours."""
    hidden, weight = inputs.hidden, inputs.weight
    args = (inputs.targets, inputs.old_logprobs, inputs.advantages, inputs.weights)
    if provider in ("triton", "torch"):
        options = OPTIONS | (extra or {})
        return lambda: grpo_loss_from_hidden(hidden, weight, *args, backend=provider, **options)[0]
    if provider == "logits":
        return lambda: grpo_loss(hidden @ weight.T, *args, **OPTIONS)[0]
    if provider == "liger":
        return _liger_forward(inputs)
    raise ValueError(f"no fused-head provider {provider!r}")


def _liger_forward(inputs: HeadInputs, level: str = "token"):
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    except Exception as error:  # installed, but built for another torch or triton
        pytest.skip(f"liger-kernel does not import here: {error}")
    loss_fn = LigerFusedLinearGRPOLoss(
        beta=0.0, compiled=inputs.hidden.is_cuda, use_ref_model=False, chunk_size=1,
        epsilon_low=OPTIONS["clip_low"], epsilon_high=OPTIONS["clip_high"], loss_type="bnpo",
        temperature=OPTIONS["temperature"], importance_sampling_level=level,
    )  # fmt: skip
    n, h = inputs.hidden.shape
    seqs, seq_len = n // inputs.seq_len, inputs.seq_len
    targets = inputs.targets.view(seqs, seq_len)
    mask = torch.ones(seqs, seq_len, device=inputs.hidden.device)
    old_logprobs = inputs.old_logprobs.view(seqs, seq_len)
    advantages = inputs.advantages[::seq_len].contiguous()  # one per sequence

    def forward():
        hidden = inputs.hidden.view(seqs, seq_len, h)
        loss, _ = loss_fn(hidden, inputs.weight, targets, mask, advantages, old_per_token_logps=old_logprobs)
        return loss

    return forward


CASES = [
    pytest.param(preset, provider, id=f"{preset.name}-{provider}-full", marks=case_marks(preset, provider))
    for preset in PRESETS
    for provider in preset.providers
]


@pytest.mark.parametrize(("preset", "provider"), CASES)
def test_fused_head(benchmark, results, preset, provider):
    inputs = make_head_inputs(preset)
    _measure_full(benchmark, results, preset, provider, inputs, _forward(provider, inputs))
    median = benchmark.stats.stats.median if benchmark.stats else None
    flops = 6 * preset.n * preset.vocab * preset.hidden
    benchmark.extra_info["tflops"] = flops / median / 1e12 if median else None


def _measure_full(benchmark, results, preset, provider, inputs, forward):
    """Time forward + backward of `forward`, the previous round's gradients dropped outside the timed call."""
    device = torch.device(preset.device)

    def setup():
        inputs.hidden.grad = inputs.weight.grad = None
        synchronize(device)
        return (), {}

    def target():
        forward().backward()
        synchronize(device)

    if benchmark.enabled and provider == "logits" and device.type == "cuda":
        target(*setup()[0])  # its grpo_loss is Triton: compile (or find the cache) before measuring
    floor_bytes = 2 * (preset.n + preset.vocab) * preset.hidden * inputs.hidden.element_size()
    measure(
        benchmark, results, op="fused_head", preset=preset, provider=provider, mode="full",
        setup=setup, target=target, floor_bytes=floor_bytes,
    )  # fmt: skip


LEVEL_CASES = [
    pytest.param(
        preset, provider, level, id=f"{preset.name}-{provider}-{level}", marks=case_marks(preset, provider)
    )
    for preset in PRESETS
    if not preset.measure_only
    for provider in preset.providers
    if provider in ("torch", "triton", "liger")
    for level in ("token", "sequence")
]


@pytest.mark.parametrize(("preset", "provider", "level"), LEVEL_CASES)
def test_fused_head_ratio_level(benchmark, results, preset, provider, level):
    inputs = make_head_inputs(preset)
    if provider == "liger":
        forward = _liger_forward(inputs, level)
    else:
        index = torch.arange(preset.n, device=inputs.targets.device) // inputs.seq_len
        forward = _forward(provider, inputs, {"ratio_level": level, "sequence_index": index})
    _measure_full(benchmark, results, preset, f"{provider}-{level}", inputs, forward)
