"""torch.compile(fullgraph=True) over code that calls the ops: the torch backend traces through, the
Triton path is an opaque custom op (here under the interpreter, on a GPU for real)."""

import pytest
import torch
from kernel_inputs import BACKENDS, loss_inputs

from lrm_fast.kernels import grpo_loss, token_logprobs


def _policy_loss(logits, targets, old, advantages, weights, ref, backend):
    # A trainer-like wrapper: temperature scaling, the loss, and a statistic used downstream.
    loss, stats = grpo_loss(
        logits,
        targets,
        old,
        advantages,
        weights,
        temperature=0.8,
        dual_clip=3.0,
        ref_logprobs=ref,
        kl_coef=0.01,
        entropy_coef=0.01,
        backend=backend,
    )
    return loss * 2.0, stats["clip_fraction"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_loss_compiles_fullgraph(backend):
    torch._dynamo.reset()
    inputs = loss_inputs(24, 96, seed=11)
    eager_x = inputs[0].clone().requires_grad_()
    eager_loss, eager_clip = _policy_loss(eager_x, *inputs[1:], backend)
    eager_loss.backward()
    compiled = torch.compile(_policy_loss, fullgraph=True)
    x = inputs[0].clone().requires_grad_()
    loss, clip = compiled(x, *inputs[1:], backend)
    loss.backward()
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(clip, eager_clip)
    torch.testing.assert_close(x.grad, eager_x.grad, rtol=1e-5, atol=1e-8)


def _gspo_loss(logits, targets, old, advantages, weights, sequence_index, backend):
    # GSPO's sequence ratio: the segment sums trace without a host sync.
    loss, stats = grpo_loss(
        logits, targets, old, advantages, weights, ratio_level="sequence", sequence_index=sequence_index,
        temperature=0.8, clip_low=0.05, clip_high=0.05, backend=backend,
    )  # fmt: skip
    return loss * 2.0, stats["seq_clip_fraction"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_gspo_loss_compiles_fullgraph(backend):
    torch._dynamo.reset()
    logits, targets, old, advantages, weights, _ = loss_inputs(24, 96, seed=13)
    index = torch.arange(24) // 5
    eager_x = logits.clone().requires_grad_()
    eager_loss, eager_clip = _gspo_loss(eager_x, targets, old, advantages, weights, index, backend)
    eager_loss.backward()
    compiled = torch.compile(_gspo_loss, fullgraph=True)
    x = logits.clone().requires_grad_()
    loss, clip = compiled(x, targets, old, advantages, weights, index, backend)
    loss.backward()
    assert eager_clip.item() > 0
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(clip, eager_clip)
    torch.testing.assert_close(x.grad, eager_x.grad, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_token_logprobs_compiles_fullgraph(backend):
    torch._dynamo.reset()
    logits, targets = loss_inputs(16, 64, seed=12)[:2]
    fn = lambda x, t: token_logprobs(x, t, temperature=0.7, backend=backend).sum()
    x_eager, x = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    fn(x_eager, targets).backward()
    compiled = torch.compile(fn, fullgraph=True)
    compiled(x, targets).backward()
    torch.testing.assert_close(x.grad, x_eager.grad, rtol=1e-5, atol=1e-8)
