"""Sampler / trainer mismatch and truncated importance sampling (rollout.log_mismatch, rollout.tis_cap)."""

import math

import pytest
import torch
from trainer_fixtures import flat_grad, synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig
from lrm_fast.kernels import token_logprobs
from lrm_fast.training.update import micro_batch_loss, sampler_correction

pytestmark = pytest.mark.usefixtures("one_thread")

LOSS = LossConfig(backend="torch")


def test_sampler_correction_by_hand():
    trainer = torch.tensor([-1.0, -1.0, -1.0, -2.0])
    sampler = torch.tensor([-1.0, -1.0 - math.log(4.0), -1.0 + math.log(2.0), math.nan])  # ratios 1, 4, 1/2
    factor, sums = sampler_correction(trainer, sampler, tis_cap=2.0)
    torch.testing.assert_close(factor, torch.tensor([1.0, 2.0, 0.5, 1.0]))  # 4 truncated to 2; NaN: 1
    logp_abs_diff, prob_ratio, truncated, tokens = sums.tolist()
    assert logp_abs_diff == pytest.approx(math.log(4.0) + math.log(2.0), rel=1e-6)
    assert prob_ratio == pytest.approx(1 + 4 + 0.5, rel=1e-6)
    assert (truncated, tokens) == (1, 3)  # the injected (NaN) token counts nowhere
    factor, sums = sampler_correction(trainer, sampler, tis_cap=None)  # measured, not applied
    assert torch.equal(factor, torch.ones(4)) and sums[2] == 0


def _batch_with_sampler_logprobs(model, shift: float):
    """One micro-batch whose sampler log-probs are the trainer's own minus `shift` (ratio = e^shift)."""
    samples = synthetic_samples(num_groups=2, group_size=4)
    B.assign_advantages(samples, 4, "std")
    B.assign_weights(samples, "token_mean", B.local_normalisers(samples), sum_norm_length=10)
    batch = M.collate(samples, False)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logp = token_logprobs(logits[batch.row, batch.position], batch.targets, temperature=1.0)
    batch.sampler_logprobs = logp - shift
    return batch


def _grad(model, batch, tis_cap, fused_head=False):
    model.zero_grad(set_to_none=True)
    loss_cfg = LossConfig(backend="torch", fused_head=fused_head)
    loss, stats = micro_batch_loss(model, None, batch, loss_cfg, temperature=1.0, tis_cap=tis_cap)
    loss.backward()
    return flat_grad(model), stats["mismatch"]


@pytest.mark.parametrize("fused_head", [False, True])
def test_tis_scales_the_gradient_by_the_truncated_ratio(fused_head):
    model = tiny_model(0)
    same = _batch_with_sampler_logprobs(model, shift=0.0)
    plain, mismatch = _grad(model, same, tis_cap=None, fused_head=fused_head)
    assert mismatch[0] / mismatch[-1] < 1e-5  # same weights, same numerics: no mismatch
    half = _batch_with_sampler_logprobs(model, shift=-math.log(2.0))  # sampler twice as likely
    torch.testing.assert_close(_grad(model, half, 3.0, fused_head)[0], 0.5 * plain, rtol=1e-4, atol=1e-7)
    triple = _batch_with_sampler_logprobs(model, shift=math.log(3.0))  # ratio 3, truncated at 2
    grad, mismatch = _grad(model, triple, 2.0, fused_head)
    torch.testing.assert_close(grad, 2.0 * plain, rtol=1e-4, atol=1e-7)
    assert mismatch[2] == mismatch[3]  # every token truncated
    assert mismatch[0] / mismatch[3] == pytest.approx(math.log(3.0), rel=1e-4)
