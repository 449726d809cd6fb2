"""Sampler / trainer mismatch and the rollout correction (rollout.log_mismatch, rollout.tis_cap,
rollout.correction_*): truncated or masked, per token or per sequence, against hand formulas."""

import math

import pytest
import torch
from trainer_fixtures import flat_grad, synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig, RolloutConfig
from lrm_fast.kernels import token_logprobs
from lrm_fast.training.sampler_correction import SamplerCorrection, sampler_correction
from lrm_fast.training.update import micro_batch_loss

pytestmark = pytest.mark.usefixtures("one_thread")

LOSS = LossConfig(backend="torch")


def test_sampler_correction_by_hand():
    trainer = torch.tensor([-1.0, -1.0, -1.0, -2.0])
    sampler = torch.tensor([-1.0, -1.0 - math.log(4.0), -1.0 + math.log(2.0), math.nan])  # ratios 1, 4, 1/2
    factor, sums = sampler_correction(trainer, sampler, SamplerCorrection(cap=2.0))
    torch.testing.assert_close(factor, torch.tensor([1.0, 2.0, 0.5, 1.0]))  # 4 truncated to 2; NaN: 1
    logp_abs_diff, prob_ratio, truncated, masked, tokens = sums.tolist()
    assert logp_abs_diff == pytest.approx(math.log(4.0) + math.log(2.0), rel=1e-6)
    assert prob_ratio == pytest.approx(1 + 4 + 0.5, rel=1e-6)
    assert (truncated, masked, tokens) == (1, 0, 3)  # the injected (NaN) token counts nowhere
    factor, sums = sampler_correction(trainer, sampler)  # measured, not applied
    assert torch.equal(factor, torch.ones(4)) and sums[2] == sums[3] == 0
    # IcePop's mask: the ratio inside [0.6, 2], 0 outside (4 above, 1/2 below).
    factor, sums = sampler_correction(trainer, sampler, SamplerCorrection(cap=2.0, mode="mask", low=0.6))
    torch.testing.assert_close(factor, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert sums[2:].tolist() == [0, 2, 3]


def test_sequence_level_correction_by_hand():
    """Two sequences: (ratios 4, 1, NaN) and (ratios 1/2, 1/2). The first's geometric mean over its known
    tokens is 2, the second's 1/2; every token of a sequence gets its sequence's weight."""
    trainer = torch.zeros(5)
    sampler = torch.tensor([-math.log(4.0), 0.0, math.nan, math.log(2.0), math.log(2.0)])
    sequence = torch.tensor([0, 0, 0, 1, 1])
    truncate = SamplerCorrection(cap=1.5, level="sequence")
    factor, sums = sampler_correction(trainer, sampler, truncate, sequence)
    torch.testing.assert_close(factor, torch.tensor([1.5, 1.5, 1.0, 0.5, 0.5]))  # 2 truncated to 1.5
    assert sums[2:].tolist() == [2, 0, 4]  # the first sequence's two known tokens
    mask = SamplerCorrection(cap=3.0, level="sequence", mode="mask", low=0.6)
    factor, sums = sampler_correction(trainer, sampler, mask, sequence)
    torch.testing.assert_close(factor, torch.tensor([2.0, 2.0, 1.0, 0.0, 0.0]))  # the second: below 0.6
    assert sums[2:].tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="needs each token's sequence index"):
        sampler_correction(trainer, sampler, truncate)


def test_sequence_index_is_the_same_packed_and_padded():
    samples = synthetic_samples(num_groups=2, group_size=3)
    padded, packed = M.collate(samples, False), M.collate(samples, True)
    expected = torch.cat([torch.full((len(s.response_ids),), i) for i, s in enumerate(samples)])
    assert torch.equal(padded.sequence_index(), expected)
    assert torch.equal(packed.sequence_index(), expected)


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


def _grad(model, batch, tis_cap, fused_head=False, level="token"):
    model.zero_grad(set_to_none=True)
    loss_cfg = LossConfig(backend="torch", fused_head=fused_head)
    correction = SamplerCorrection(cap=tis_cap, level=level)
    loss, stats = micro_batch_loss(model, None, batch, loss_cfg, temperature=1.0, correction=correction)
    loss.backward()
    return flat_grad(model), stats["mismatch"]


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("fused_head", [False, True])
def test_tis_scales_the_gradient_by_the_truncated_ratio(fused_head, level):
    model = tiny_model(0)
    same = _batch_with_sampler_logprobs(model, shift=0.0)
    plain, mismatch = _grad(model, same, tis_cap=None, fused_head=fused_head)
    assert mismatch[0] / mismatch[-1] < 1e-5  # same weights, same numerics: no mismatch
    half = _batch_with_sampler_logprobs(model, shift=-math.log(2.0))  # sampler twice as likely
    torch.testing.assert_close(
        _grad(model, half, 3.0, fused_head, level)[0], 0.5 * plain, rtol=1e-4, atol=1e-7
    )
    triple = _batch_with_sampler_logprobs(model, shift=math.log(3.0))  # ratio 3, truncated at 2
    grad, mismatch = _grad(model, triple, 2.0, fused_head, level)
    torch.testing.assert_close(grad, 2.0 * plain, rtol=1e-4, atol=1e-7)
    assert mismatch[2] == mismatch[4]  # every token truncated
    assert mismatch[0] / mismatch[4] == pytest.approx(math.log(3.0), rel=1e-4)


def test_the_runs_correction_from_its_config():
    rollout = RolloutConfig(
        tis_cap=2.0, correction_level="sequence", correction_mode="mask", correction_low=0.5
    )
    assert SamplerCorrection.of(rollout, asynchronous=False) == SamplerCorrection(
        2.0, "sequence", "mask", 0.5
    )
    # Asynchronous rollouts weight stale tokens whatever tis_cap says: null is no cap, not no weight.
    assert SamplerCorrection.of(RolloutConfig(), asynchronous=True).cap == math.inf
    assert not SamplerCorrection.of(RolloutConfig(), asynchronous=False).applied
