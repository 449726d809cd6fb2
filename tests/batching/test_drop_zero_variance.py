"""regime.drop_zero_variance skips the forward of zero-variance groups (A = 0, no policy gradient): it must
change nothing else, whatever the aggregation, the study's micro-batch weighting included."""

import pytest
import torch
from trainer_fixtures import flat_grad, synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig, RegimeConfig
from lrm_fast.config.choices import Aggregation
from lrm_fast.levers.regimes import apply_regime
from lrm_fast.training.update import micro_batch_loss

C = 10  # the constant length of the token-sum aggregations


def _sample(length: int, reward: float) -> B.Sample:
    return B.Sample([1, 2], [3] * length, reward=reward, correct=reward > 0)


def test_the_studys_micro_batch_weights_count_the_zero_variance_responses():
    """One group of two 100-token responses with A != 0 and one all-correct group of two 20-token
    responses, in one micro-batch. The study's micro-batch holds all four (dp_actor.py): each token mean
    weight is s_m / (S * T_m) = 4 / (4 * 240) = 1/240, forwarded or not; counting only the forwarded
    responses would give 2 / (4 * 200) = 1/400."""
    samples = [_sample(100, 1.0), _sample(100, 0.0), _sample(20, 1.0), _sample(20, 1.0)]
    B.assign_advantages(samples, 2, "std")
    for drop in (True, False):
        apply_regime(samples, "full", RegimeConfig(drop_zero_variance=drop))
        groups = M.weighted_micro_batches(
            samples, "micro_batch_token_mean", B.local_normalisers(samples), C, 10_000, packed=False
        )
        forwarded = [s for group in groups for s in group]
        assert len(forwarded) == (2 if drop else 4)
        assert [s.weight for s in forwarded[:2]] == pytest.approx([1 / 240, 1 / 240])
    # micro_batch_token_sum: s_m / (S * C) = 4 / (4 * 10), whether the zero-variance rows are forwarded
    apply_regime(samples, "full", RegimeConfig(drop_zero_variance=True))
    groups = M.weighted_micro_batches(
        samples, "micro_batch_token_sum", B.local_normalisers(samples), C, 10_000, packed=False
    )
    assert [s.weight for s in groups[0]] == pytest.approx([1 / 10, 1 / 10])


def _gradient(samples, aggregation: str, drop: bool, token_budget: int) -> torch.Tensor:
    apply_regime(samples, "full", RegimeConfig(drop_zero_variance=drop))
    normalisers = B.local_normalisers(samples)
    groups = M.weighted_micro_batches(samples, aggregation, normalisers, C, token_budget, packed=False)
    model = tiny_model()
    loss_cfg = LossConfig(kl_coef=0.0, entropy_coef=0.0, backend="torch")
    for group in groups:
        loss, _ = micro_batch_loss(model, None, M.collate(group, False), loss_cfg, 1.0)
        loss.backward()
    return flat_grad(model)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("aggregation", list(Aggregation))
@pytest.mark.parametrize("token_budget", [40, 10_000], ids=["several_micro_batches", "one_micro_batch"])
def test_dropping_zero_variance_groups_leaves_the_gradient_unchanged(aggregation, token_budget):
    """With no KL or entropy term a zero-variance response contributes nothing itself; dropping it must not
    move any other response's weight either (synthetic_samples: every third group zero-variance)."""
    samples = synthetic_samples(num_groups=6, group_size=4)
    B.assign_advantages(samples, 4, "std")
    assert any(s.zero_variance for s in samples) and not all(s.zero_variance for s in samples)
    kept = _gradient(samples, aggregation, drop=False, token_budget=token_budget)
    dropped = _gradient(samples, aggregation, drop=True, token_budget=token_budget)
    assert kept.abs().max() > 0
    # fp32 sums over different rows differ in the last bits: the tolerance of the micro-batch invariance
    # test (tests/batching/test_micro_batches.py); a moved weight changes gradients by percents.
    torch.testing.assert_close(dropped, kept, rtol=1e-4, atol=1e-7)
