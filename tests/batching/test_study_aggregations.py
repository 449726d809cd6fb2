"""The study's loss aggregations (lrm_fast/batching/samples.py): token sums over a constant
(loss_remove_token_mean) and verl's weighting of each micro-batch by its share of sequences
(use_dynamic_bsz), by hand and against verl's formula written out on padded tensors."""

import itertools

import pytest
import torch

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B

C = 10  # the constant length (the study's padded response length)


def _samples(lengths: list[int]) -> list[B.Sample]:
    return [B.Sample([1, 2], list(range(3, 3 + n)), reward=1.0, correct=True) for n in lengths]


def _weights(samples, aggregation, cut: list[int]) -> list[list[float]]:
    """Weights of `samples` cut into micro-batches of `cut` responses each, as the trainer sets them."""
    B.assign_weights(samples, aggregation, B.local_normalisers(samples), sum_norm_length=C)
    bounds = [sum(cut[:i]) for i in range(len(cut) + 1)]
    groups = [samples[a:b] for a, b in itertools.pairwise(bounds)]
    B.weight_micro_batches(groups, aggregation, sum_norm_length=C)
    return [[s.weight for s in group] for group in groups]


def test_token_sum_weights_every_token_one_over_the_constant():
    samples = _samples([3, 2, 4])
    samples[1].regime_weight = 0.5
    B.assign_weights(samples, "token_sum", B.local_normalisers(samples), sum_norm_length=C)
    assert [s.weight for s in samples] == pytest.approx([1 / 10, 0.5 / 10, 1 / 10])


def test_micro_batch_weights_on_a_two_micro_batch_split():
    # Responses of 3 and 2 tokens in micro-batch 1 (2 sequences, 5 tokens), one of 4 in micro-batch 2;
    # S = 3 sequences in the mini-batch.
    lengths, cut = [3, 2, 4], [2, 1]
    # token mean of each micro-batch times its share of sequences: (2/3) / 5 and (1/3) / 4
    mean = _weights(_samples(lengths), "micro_batch_token_mean", cut)
    assert mean == [pytest.approx([2 / 15, 2 / 15]), pytest.approx([1 / 12])]
    # token sum over C = 10 times the share: (2/3) / 10 and (1/3) / 10
    total = _weights(_samples(lengths), "micro_batch_token_sum", cut)
    assert total == [pytest.approx([1 / 15, 1 / 15]), pytest.approx([1 / 30])]


def _verl_loss(micro_batches, mini_batch_size: int, remove_token_mean: bool) -> torch.Tensor:
    """The study's loss of one mini-batch: core_algos.compute_policy_loss's aggregation on each padded
    micro-batch ([b, C] token losses and response mask), scaled by len(data) / ppo_mini_batch_size
    (dp_actor.py:351-353, use_dynamic_bsz)."""
    total = torch.zeros((), dtype=torch.float64)
    for losses, mask in micro_batches:
        if remove_token_mean:  # core_algos.py:313-314
            pg_loss = (losses * mask).sum() / mask.shape[-1]
        else:  # verl_F.masked_mean
            pg_loss = (losses * mask).sum() / mask.sum()
        total = total + pg_loss * (len(losses) / mini_batch_size)
    return total


@pytest.mark.parametrize(
    "aggregation, remove_token_mean",
    [("micro_batch_token_mean", False), ("micro_batch_token_sum", True)],
    ids=["token_mean", "token_sum"],
)
def test_micro_batch_aggregations_equal_verls_loss(aggregation, remove_token_mean):
    lengths, cut = [3, 2, 4, 1, 6], [2, 3]
    gen = torch.Generator().manual_seed(0)
    token_losses = [torch.randn(n, generator=gen, dtype=torch.float64) for n in lengths]
    weights = [w for group in _weights(_samples(lengths), aggregation, cut) for w in group]
    ours = sum(w * losses.sum() for w, losses in zip(weights, token_losses, strict=True))

    padded = torch.zeros(len(lengths), C, dtype=torch.float64)
    mask = torch.zeros(len(lengths), C, dtype=torch.float64)
    for i, losses in enumerate(token_losses):
        padded[i, : len(losses)], mask[i, : len(losses)] = losses, 1.0
    micro = [(padded[:2], mask[:2]), (padded[2:], mask[2:])]
    expected = _verl_loss(micro, len(lengths), remove_token_mean)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize(
    "weighted, plain",
    [("micro_batch_token_mean", "token_mean"), ("micro_batch_token_sum", "token_sum")],
)
def test_one_micro_batch_per_mini_batch_equals_the_plain_aggregation(weighted, plain):
    lengths = [3, 2, 4, 1]
    (ours,) = _weights(_samples(lengths), weighted, [4])
    (reference,) = _weights(_samples(lengths), plain, [4])
    assert ours == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("aggregation", ["micro_batch_token_mean", "micro_batch_token_sum"])
def test_micro_batch_weighting_depends_on_the_cut(aggregation):
    """Why these two are exempt from the micro-batch invariance test: the same responses and token
    losses give a different loss under another cut."""
    lengths = [5, 1, 1, 6, 2]
    token_loss = [1.0, -2.0, 3.0, 0.5, 2.0]  # the same for each token of a response

    def loss(cut):
        weights = [w for group in _weights(_samples(lengths), aggregation, cut) for w in group]
        return sum(w * n * x for w, n, x in zip(weights, lengths, token_loss, strict=True))

    assert abs(loss([2, 3]) - loss([4, 1])) > 0.05 * abs(loss([5]))


def test_a_pruned_step_shrinks_by_the_kept_share_of_responses():
    """regime.renormalise=false: the normaliser counts all S responses, the micro-batches only the K
    kept ones, so the token weights add up to K / S per token-mean unit (the study's pruned step)."""
    samples = _samples([3, 2, 4, 1, 5, 2])
    for s in samples[::3]:
        s.regime_weight, s.forward = 0.0, False
    normalisers = B.local_normalisers(samples)
    groups = M.weighted_micro_batches(samples, "micro_batch_token_mean", normalisers, C, 14, packed=True)
    assert len(groups) > 1
    kept_weight = sum(s.weight * len(s.response_ids) for group in groups for s in group)
    assert kept_weight == pytest.approx(4 / 6)
