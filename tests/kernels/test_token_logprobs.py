"""token_logprobs (both backends) against the float64 reference."""

import pytest
import torch
from kernel_inputs import BACKENDS, assert_close_to_oracle, rel_err

from lrm_fast.kernels import reference, token_logprobs

SHAPES = {
    "single_token": (1, 1000),
    "small": (64, 300),
    "unaligned_vocab": (6, 33001),  # V just over one interpreter block
    "llama3_vocab": (2, 128256),
    "qwen2_vocab": (2, 151936),
}


def _forward_backward(logits, targets, upstream, temperature, backend=None, native=False):
    x = logits.clone().requires_grad_()
    if backend is None:
        logp = reference.token_logprobs(x, targets, temperature=temperature)
    else:
        logp = token_logprobs(x, targets, temperature=temperature, backend=backend)
    (logp * upstream.to(logp.dtype)).sum().backward()
    return logp.detach(), x.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"]
)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logprobs_matches_reference(monkeypatch, backend, dtype, shape, temperature):
    g = torch.Generator().manual_seed(0)
    n, vocab = shape
    logits = (torch.randn(n, vocab, generator=g) * 3).to(dtype)
    targets = torch.randint(0, vocab, (n,), generator=g)
    upstream = torch.randn(n, generator=g)  # a random upstream gradient exercises every row's scale
    logp, grad = _forward_backward(logits, targets, upstream, temperature, backend)
    logp64, grad64 = _forward_backward(logits.double(), targets, upstream.double(), temperature)
    assert logp.dtype == torch.float32 and grad.dtype == dtype
    native_logp = native_grad = None
    if dtype != torch.float32:
        with monkeypatch.context() as m:
            m.setattr(reference, "_compute_dtype", lambda t: t.dtype)
            native_logp, native_grad = _forward_backward(logits, targets, upstream, temperature)
    assert_close_to_oracle(logp, logp64, native_logp)
    assert_close_to_oracle(grad, grad64, native_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_inf_logits_get_zero_gradient(backend):
    logits = torch.randn(8, 50)
    targets = torch.arange(8)
    logits[:, 20:] = float("-inf")
    logp, grad = _forward_backward(logits, targets, torch.ones(8), 1.0, backend)
    logp64, grad64 = _forward_backward(logits.double(), targets, torch.ones(8).double(), 1.0)
    assert torch.isfinite(grad).all() and torch.all(grad[:, 20:] == 0)
    assert rel_err(logp, logp64) <= 1e-5 and rel_err(grad, grad64) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input(backend):
    x = torch.zeros(0, 10, requires_grad=True)
    logp = token_logprobs(x, torch.zeros(0, dtype=torch.long), backend=backend)
    logp.sum().backward()
    assert logp.shape == (0,) and x.grad.shape == (0, 10)
