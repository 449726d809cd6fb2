"""grpo_loss benchmarks: the clipped GRPO policy loss over N packed tokens, token-mean aggregation.

    pytest benchmarks/bench_grpo_loss.py --benchmark-only -k cpu

Every provider computes the same loss: temperature 1, ratio clipped to [0.8, 1.2], no dual clip, no KL,
no entropy bonus, weights 1/N (a token mean), old log-probs off-policy by a little, one advantage per
sequence of up to 1024 tokens. Liger-Kernel's logits-level loss (`triton_grpo_loss`) gets the same
semantics with loss_type="bnpo" (sum over tokens / number of tokens) and inplace=False like ours; it takes
[B, L + 1, V] logits (the last position of each sequence is dropped), so it reads B extra rows.

test_grpo_loss_objective times our own backends under each policy objective side by side (providers
"torch-clipped", "torch-cispo", "torch-gspo", ...): CISPO changes only the O(N) per-token coefficients, so
its time and memory are to stay within 10% of the clipped loss's (`python -m benchmarks.report --versus
torch-clipped`). GSPO's sequence ratio adds a segment sum (Triton: nothing more, its two passes stay two)
and, on the torch backend, a second pass over each chunk of logits: there it reports that pass's cost.

Floor: forward reads the [N, V] logits once; backward reads them and writes the gradient. Our Triton
and chunked torch backends compute the gradient in the forward (two reads and one write there) and only
scale it in the backward, so their forward and backward split differently from the floor's.
"""

import pytest
import torch

from lrm_fast.kernels import grpo_loss, reference

from .cases import (
    LOGITS_PRESETS,
    LogitsInputs,
    case_marks,
    compiled_reference,
    logits_cases,
    logits_floor_bytes,
    make_logits_inputs,
    measure,
    mode_calls,
)

OPTIONS = {"temperature": 1.0, "clip_low": 0.2, "clip_high": 0.2}


def _forward(provider: str, inputs: LogitsInputs):
    """A call returning the scalar loss, and the leaf tensor that gets its gradient."""
    args = (inputs.logits, inputs.targets, inputs.old_logprobs, inputs.advantages, inputs.weights)
    if provider in ("triton", "torch"):
        return lambda: grpo_loss(*args, backend=provider, **OPTIONS)[0], inputs.logits
    if provider == "naive":
        return lambda: reference.grpo_loss(*args, **OPTIONS)[0], inputs.logits
    if provider == "compiled":
        compiled = compiled_reference("grpo_loss")
        return lambda: compiled(*args, **OPTIONS)[0], inputs.logits
    if provider == "liger":
        return _liger_forward(inputs)
    raise ValueError(f"no grpo_loss provider {provider!r}")


def _liger_forward(inputs: LogitsInputs):
    try:
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss
    except Exception as error:  # installed, but built for another torch or triton
        pytest.skip(f"liger-kernel does not import here: {error}")
    n, vocab = inputs.logits.shape
    seqs, seq_len = n // inputs.seq_len, inputs.seq_len
    logits = inputs.logits.new_zeros(seqs, seq_len + 1, vocab)
    logits[:, :seq_len] = inputs.logits.detach().view(seqs, seq_len, vocab)
    inputs.logits = None  # one copy of the logits is enough
    logits.requires_grad_()
    targets = inputs.targets.view(seqs, seq_len)
    old_logprobs = inputs.old_logprobs.view(seqs, seq_len)
    advantages = inputs.advantages[::seq_len].contiguous()  # one per sequence

    def forward():
        loss, _ = triton_grpo_loss(
            logits, old_logprobs, None, targets, advantages, None,
            temperature=OPTIONS["temperature"], beta=0.0, eps_low=OPTIONS["clip_low"],
            eps_high=OPTIONS["clip_high"], inplace=False, loss_type="bnpo", reduce=True,
        )  # fmt: skip
        return loss

    return forward, logits


# Each objective's options; gspo's sequences are the inputs' (one advantage each).
OBJECTIVES = {"clipped": {}, "cispo": {"objective": "cispo"}, "gspo": {"ratio_level": "sequence"}}
# Our backends only: the torch backend on CPU, the Triton kernel (interpreted on CPU) wherever a preset
# has it.
OBJECTIVE_CASES = [
    pytest.param(
        preset,
        provider,
        objective,
        id=f"{preset.name}-{provider}-{objective}",
        marks=case_marks(preset, provider),
    )
    for preset in LOGITS_PRESETS
    for provider in preset.providers
    if provider == "triton" or (provider == "torch" and preset.device == "cpu")
    for objective in OBJECTIVES
]


@pytest.mark.parametrize(("preset", "provider", "objective"), OBJECTIVE_CASES)
def test_grpo_loss_objective(benchmark, results, preset, provider, objective):
    inputs = make_logits_inputs(preset)
    args = (inputs.logits, inputs.targets, inputs.old_logprobs, inputs.advantages, inputs.weights)
    options = OPTIONS | OBJECTIVES[objective]
    if objective == "gspo":
        n = len(inputs.targets)
        options["sequence_index"] = torch.arange(n, device=inputs.targets.device) // inputs.seq_len

    def forward():
        return grpo_loss(*args, backend=provider, **options)[0]

    setup, target = mode_calls(
        "full", forward=forward, backward=lambda loss: loss.backward(), leaf=inputs.logits
    )
    measure(
        benchmark, results, op="grpo_loss", preset=preset, provider=f"{provider}-{objective}", mode="full",
        setup=setup, target=target, floor_bytes=logits_floor_bytes(preset, "full"),
    )  # fmt: skip


@pytest.mark.parametrize(("preset", "provider", "mode"), logits_cases())
def test_grpo_loss(benchmark, results, preset, provider, mode):
    forward, leaf = _forward(provider, make_logits_inputs(preset))
    setup, target = mode_calls(mode, forward=forward, backward=lambda loss: loss.backward(), leaf=leaf)
    measure(
        benchmark, results, op="grpo_loss", preset=preset, provider=provider, mode=mode,
        setup=setup, target=target, floor_bytes=logits_floor_bytes(preset, mode),
    )  # fmt: skip
