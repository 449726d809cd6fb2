"""token_logprobs benchmarks: log pi(target) of N packed tokens over a V-wide vocabulary.

    pytest benchmarks/bench_token_logprobs.py --benchmark-only -k cpu

Floor: the forward reads the [N, V] logits once, the backward reads them again and writes the gradient.
The backward is driven by a random upstream gradient dL/dlogp, as a loss would give it.
"""

import functools

import pytest
import torch

from lrm_fast.kernels import reference, token_logprobs

from .cases import (
    compiled_reference,
    logits_cases,
    logits_floor_bytes,
    make_logits_inputs,
    measure,
    mode_calls,
)


def _op(provider: str):
    if provider in ("triton", "torch"):
        return functools.partial(token_logprobs, backend=provider)
    if provider == "naive":
        return reference.token_logprobs
    if provider == "compiled":
        return compiled_reference("token_logprobs")
    raise ValueError(f"no token_logprobs provider {provider!r}")


# Liger-Kernel's fused log-softmax (fused_selective_log_softmax) has no backward: no liger provider here.
@pytest.mark.parametrize(("preset", "provider", "mode"), logits_cases(exclude=("liger",)))
def test_token_logprobs(benchmark, results, preset, provider, mode):
    inputs = make_logits_inputs(preset)
    op = _op(provider)
    grad_logp = torch.randn(preset.n, device=preset.device)
    setup, target = mode_calls(
        mode,
        forward=lambda: op(inputs.logits, inputs.targets),
        backward=lambda logp: logp.backward(grad_logp),
        leaf=inputs.logits,
    )
    measure(
        benchmark, results, op="token_logprobs", preset=preset, provider=provider, mode=mode,
        setup=setup, target=target, floor_bytes=logits_floor_bytes(preset, mode),
    )  # fmt: skip
