"""The chunked torch backend never holds an fp32 [N, V] copy: measured, not assumed."""

import pytest
from kernel_inputs import loss_inputs

from benchmarks.memory import cpu_peak_supported, peak_memory_bytes
from lrm_fast.kernels import grpo_loss, reference

N, V = 8192, 32000  # fp32 logits: 1.05 GB


@pytest.mark.slow
@pytest.mark.skipif(not cpu_peak_supported(), reason="needs Linux /proc peak-RSS accounting")
def test_torch_backend_peak_memory_is_at_most_a_third_of_the_naive_reference():
    logits, targets, old, advantages, weights, ref = loss_inputs(N, V, seed=0)
    kwargs = dict(ref_logprobs=ref, kl_coef=0.001, entropy_coef=0.001)

    def step(loss_fn):
        x = logits.detach().requires_grad_()
        loss, _ = loss_fn(x, targets, old, advantages, weights, **kwargs)
        loss.backward()
        return x.grad  # the gradient a step produces counts for both

    chunked = lambda *a, **k: grpo_loss(*a, backend="torch", **k)
    step(chunked)  # warm-up: first-call allocations of the process are not the backend's
    peak_chunked = peak_memory_bytes(lambda: step(chunked))
    peak_naive = peak_memory_bytes(lambda: step(reference.grpo_loss))
    logits_bytes = logits.numel() * logits.element_size()
    assert peak_chunked <= peak_naive / 3, (peak_chunked / 2**20, peak_naive / 2**20)
    # And in absolute terms: the gradient buffer plus chunk-sized temporaries, well under two logits.
    assert peak_chunked < 1.5 * logits_bytes, peak_chunked / logits_bytes
