"""Sample regimes (PAPER.md §2): kept responses, their weights, the gradient, neg_to_pos switching."""

import pytest
import torch
from trainer_fixtures import flat_grad, synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig, RegimeConfig
from lrm_fast.levers.regimes import RegimeSchedule, apply_regime
from lrm_fast.levers.scoring import zero_variance_counts
from lrm_fast.training.update import micro_batch_loss

G = 4


def scored(seed=0, groups=6):
    samples = synthetic_samples(groups, G, seed=seed)
    B.assign_advantages(samples, G, "std")
    return samples


@pytest.mark.parametrize(
    ("regime", "expected"),
    [
        ("full", lambda s: 1.0),
        ("positive", lambda s: float(s.correct)),
        ("negative", lambda s: float(not s.correct)),
        ("weighted", lambda s: 0.1 if s.correct else 1.0),
    ],
)
def test_regime_keeps_exactly_the_intended_responses(regime, expected):
    samples = scored()
    cfg = RegimeConfig(name=regime, positive_weight=0.1, negative_weight=1.0, drop_zero_variance=False)
    apply_regime(samples, regime, cfg)
    assert [s.regime_weight for s in samples] == [expected(s) for s in samples]
    assert [s.forward for s in samples] == [expected(s) > 0 for s in samples]  # no gradient: not forwarded


def test_regime_select_by_advantage_sign_differs_only_in_zero_variance_groups():
    samples = scored()
    by_sign = RegimeConfig(name="positive", select_by="advantage", drop_zero_variance=False)
    apply_regime(samples, "positive", by_sign)
    for s in samples:
        assert s.regime_weight == float(s.advantage > 0)
        if not s.zero_variance:
            assert s.regime_weight == float(s.correct)
    assert any(s.zero_variance and s.correct for s in samples)  # the case where the two rules differ


def test_regime_drop_zero_variance_skips_forward_but_keeps_weight():
    samples = scored()
    apply_regime(samples, "full", RegimeConfig(drop_zero_variance=True))
    assert [s.forward for s in samples] == [not s.zero_variance for s in samples]
    assert all(s.regime_weight == 1.0 for s in samples)


def loss_and_grad(model, samples, aggregation="token_mean", renormalise=False):
    counted = [s for s in samples if s.regime_weight > 0] if renormalise else samples
    normalisers = B.local_normalisers(counted)
    model.zero_grad(set_to_none=True)
    total = 0.0
    for mb in M.weighted_micro_batches(samples, aggregation, normalisers, 10, 4096, False):
        loss, _ = micro_batch_loss(model, None, M.collate(mb, False), LossConfig(backend="torch"), 1.0)
        loss.backward()
        total += loss.item()
    return total, flat_grad(model)


@pytest.mark.parametrize("regime", ["positive", "negative"])
def test_regime_gives_pruned_responses_zero_gradient(regime, one_thread):
    model = tiny_model()
    samples = scored(seed=1)
    apply_regime(samples, regime, RegimeConfig(name=regime, drop_zero_variance=False))
    pruned_loss, pruned_grad = loss_and_grad(model, samples)
    # The same step with the pruned responses forwarded but weighted 0 gives the same gradient:
    # they contribute nothing, and the kept ones keep their full-batch weights (no renormalisation).
    for s in samples:
        s.forward = True
    masked_loss, masked_grad = loss_and_grad(model, samples)
    torch.testing.assert_close(pruned_grad, masked_grad, rtol=1e-5, atol=1e-8)
    assert pruned_loss == pytest.approx(masked_loss, rel=1e-5)
    full = scored(seed=1)
    apply_regime(full, "full", RegimeConfig(drop_zero_variance=False))
    _, full_grad = loss_and_grad(model, full)
    assert not torch.allclose(pruned_grad, full_grad)


def test_regime_renormalise_scales_kept_tokens_to_a_full_size_update(one_thread):
    samples = scored(seed=2)
    apply_regime(samples, "negative", RegimeConfig(name="negative", drop_zero_variance=False))
    kept = [s for s in samples if s.regime_weight > 0]
    B.assign_weights(samples, "token_mean", B.local_normalisers(kept), sum_norm_length=10)
    kept_tokens = sum(len(s.response_ids) for s in kept)
    assert sum(s.weight * len(s.response_ids) for s in samples) == pytest.approx(1.0)
    assert all(s.weight == pytest.approx(1 / kept_tokens) for s in kept)
    B.assign_weights(samples, "token_mean", B.local_normalisers(samples), sum_norm_length=10)
    all_tokens = sum(len(s.response_ids) for s in samples)
    assert sum(s.weight * len(s.response_ids) for s in samples) == pytest.approx(kept_tokens / all_tokens)


def test_regime_neg_to_pos_switches_at_the_intended_step():
    schedule = RegimeSchedule(RegimeConfig(name="neg_to_pos", switch_step=3, second_phase="positive"))
    assert [schedule.regime(step) for step in range(1, 7)] == ["negative"] * 3 + ["positive"] * 3
    resumed = RegimeSchedule(RegimeConfig(name="neg_to_pos", switch_step=3))
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.regime(4) == "full"  # second_phase defaults to full


def test_regime_neg_to_pos_switches_after_accuracy_threshold():
    schedule = RegimeSchedule(RegimeConfig(name="neg_to_pos", switch_accuracy=0.5))
    assert schedule.regime(10) == "negative"
    schedule.observe_heldout_accuracy(10, 0.49)
    assert schedule.regime(11) == "negative"
    schedule.observe_heldout_accuracy(20, 0.5)
    assert schedule.regime(21) == "full"
    schedule.observe_heldout_accuracy(30, 0.1)  # never switches back
    assert schedule.regime(31) == "full" and schedule.switched_at == 20
    # Whichever rule comes first wins.
    both = RegimeSchedule(RegimeConfig(name="neg_to_pos", switch_step=100, switch_accuracy=0.5))
    both.observe_heldout_accuracy(5, 0.9)
    assert both.regime(6) == "full"


def test_regime_zero_advantage_counts():
    correct = [True, True, True, False, False, False, True, False, True]
    counts = zero_variance_counts(correct, 3)
    assert (counts.all_correct, counts.all_wrong, counts.groups) == (1, 1, 3)
    samples = scored(seed=3)
    counts = zero_variance_counts([s.correct for s in samples], G)
    flagged = sum(samples[i].zero_variance for i in range(0, len(samples), G))
    assert counts.all_correct + counts.all_wrong == flagged
