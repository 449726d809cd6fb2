"""Micro-batching changes nothing: global normalisers make the loss a plain sum over tokens."""

import pytest
import torch
from trainer_fixtures import flat_grad, prepared_batches, synthetic_samples, tiny_model

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig
from lrm_fast.config.choices import Aggregation
from lrm_fast.training.update import micro_batch_loss

pytestmark = pytest.mark.usefixtures("one_thread")

LOSS = LossConfig(kl_coef=0.0, entropy_coef=0.01, backend="torch")


def _loss_and_grad(model, batches, loss_cfg=LOSS, shaping_gamma=None, ref_model=None):
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        loss, _ = micro_batch_loss(model, ref_model, batch, loss_cfg, 0.9, shaping_gamma=shaping_gamma)
        loss.backward()
        total += loss.item()
    return total, flat_grad(model)


# Exempt: verl's micro-batch weighting (the study's) scales each micro-batch by its share of sequences, so
# its loss depends on the cut by design (tests/batching/test_study_aggregations.py checks it differs).
SPLIT_INVARIANT = [a for a in Aggregation if a not in B.MICRO_BATCH_WEIGHTED]


@pytest.mark.parametrize("aggregation", SPLIT_INVARIANT)
@pytest.mark.parametrize("token_budget", [16, 40, 100, 10_000], ids=lambda t: f"budget{t}")
def test_micro_batches_match_the_whole_batch(aggregation, token_budget):
    model = tiny_model()
    samples = synthetic_samples(num_groups=6, group_size=4)
    whole = prepared_batches(samples, 4, aggregation, token_budget=10_000)
    split = prepared_batches(synthetic_samples(num_groups=6, group_size=4), 4, aggregation, token_budget)
    assert len(whole) == 1 and (token_budget == 10_000 or len(split) > 1)
    loss_whole, grad_whole = _loss_and_grad(model, whole)
    loss_split, grad_split = _loss_and_grad(model, split)
    assert loss_split == pytest.approx(loss_whole, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grad_split, grad_whole, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kl_coef", [0.0, 0.05], ids=["no_kl", "kl"])
@pytest.mark.parametrize("shaping_gamma", [None, 0.1], ids=["plain", "luffy"])
def test_micro_batches_fused_head_matches_the_logits_path(shaping_gamma, kl_coef):
    """Same loss and gradients; with KL the reference's log-probs come through its hidden states too."""
    model = tiny_model()
    ref_model = tiny_model(seed=1) if kl_coef else None  # another model: the KL term is not zero
    samples = synthetic_samples(num_groups=6, group_size=4)
    samples[1].injected = samples[6].injected = True
    batches = prepared_batches(samples, 4, "token_mean", token_budget=40)
    plain = LossConfig(kl_coef=kl_coef, entropy_coef=0.01, backend="torch")
    loss, grad = _loss_and_grad(model, batches, plain, shaping_gamma, ref_model)
    fused = LossConfig(kl_coef=kl_coef, entropy_coef=0.01, backend="torch", fused_head=True)
    fused_loss, fused_grad = _loss_and_grad(model, batches, fused, shaping_gamma, ref_model)
    assert fused_loss == pytest.approx(loss, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(fused_grad, grad, rtol=1e-4, atol=1e-7)


def test_token_mean_weights_every_token_equally():
    samples = synthetic_samples(num_groups=2, group_size=3)
    B.assign_weights(samples, "token_mean", B.local_normalisers(samples), sum_norm_length=10)
    total_tokens = sum(len(s.response_ids) for s in samples)
    assert all(s.weight == pytest.approx(1 / total_tokens) for s in samples)


def test_seq_mean_weights_sum_to_one_per_sequence_share():
    samples = synthetic_samples(num_groups=2, group_size=3)
    B.assign_weights(samples, "seq_mean_token_mean", B.local_normalisers(samples), sum_norm_length=10)
    assert all(s.weight * len(s.response_ids) == pytest.approx(1 / 6) for s in samples)
    B.assign_weights(samples, "seq_mean_token_sum_norm", B.local_normalisers(samples), sum_norm_length=10)
    assert all(s.weight == pytest.approx(1 / (10 * 6)) for s in samples)


def test_dropped_responses_keep_their_share_of_the_normaliser():
    samples = synthetic_samples(num_groups=3, group_size=4)
    B.assign_weights(samples, "token_mean", B.local_normalisers(samples), sum_norm_length=10)
    before = [s.weight for s in samples]
    samples[0].forward = False
    cut = M.weighted_micro_batches(samples, "token_mean", B.local_normalisers(samples), 10, 10_000, False)
    assert [s.weight for s in samples] == before
    packed = [s for mb in cut for s in mb]
    assert all(s is not samples[0] for s in packed) and len(packed) == len(samples) - 1


def test_packing_respects_the_token_budget():
    samples = synthetic_samples(num_groups=5, group_size=4)
    for budget in (12, 30, 64):
        for mb in M.micro_batches(samples, budget, False):
            longest = max(s.num_tokens for s in mb)
            assert len(mb) == 1 or len(mb) * longest <= budget


def test_collate_points_at_the_logits_that_predict_each_response_token():
    sample = B.Sample([5, 6, 7], [8, 9], reward=1.0, correct=True, advantage=0.5, weight=0.25)
    mb = M.collate([sample], False)
    assert mb.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert mb.position.tolist() == [2, 3]  # logits at 2 predict token 3 (= 8), at 3 predict 9
    assert mb.targets.tolist() == [8, 9]
    assert torch.equal(mb.input_ids[mb.row, mb.position + 1], mb.targets)
