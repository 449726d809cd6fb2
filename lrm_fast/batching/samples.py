"""Scored responses: group advantages and the aggregation weight of every response.

A step's responses arrive grouped (G consecutive responses per prompt). Advantages always come from the
full group (loss.advantage_estimator):

    grpo          A_i = (r_i - mean_g r) / (std_g r + eps), or r_i - mean_g r (advantage_scale=none)
    rloo          A_i = r_i - mean_{j in g, j != i} r_j                              (arXiv 2402.14740)
    reinforce_pp  A_i = (r_i - mean_g r) / (std_B + eps)           (arXiv 2501.03262, "with baseline")

REINFORCE++'s std_B is over the whole training batch (scale_by_batch_std): every rank's responses, after
dynamic sampling has filled the batch and before the regime or the mini-batch split, computed in the
trainer (also under asynchronous rollouts, whose process only centres the groups). It counts responses,
not tokens, as ms-swift's reinforce_plus_plus does (verl and OpenRLHF whiten over tokens instead, and
also subtract the token mean, which gives zero-advantage responses an advantage): each response's
advantage as it enters the update, zero-variance groups' and masked truncated responses' zeros included,
responses removed by overlong filtering left out. The batch mean of group-centred advantages is 0, so the
paper's mean subtraction is left out and a zero advantage stays exactly 0; the std is taken about 0,
sqrt(sum A^2 / (n - 1)) (the sample std when no response is left out), so that responses left out, whose
group mean included them, cannot shrink it to the spread around some other mean.

Each response then gets one aggregation weight, shared by its tokens, whose normaliser is
global: computed over the whole mini-batch (the whole batch with one optimizer step per rollout batch) on
every rank before the micro-batch loop, so that the sum of the micro-batch losses over all ranks equals
the loss of the whole mini-batch at once.

    token_mean               w_i = 1 / (sum_j L_j)           every token counts the same (DAPO)
    seq_mean_token_mean      w_i = 1 / (L_i * S)             every sequence counts the same (GRPO)
    seq_mean_token_sum_norm  w_i = 1 / (C * S)               sum of tokens over a constant (Dr. GRPO)
    token_sum                w_i = 1 / C                     sum of tokens over a constant (the study's
                                                             loss_remove_token_mean)

L_i is response i's length, S the number of responses and C a constant length, all over the full
mini-batch (responses that are not forwarded still count: dropping them changes no other response's
weight), except responses removed by overlong filtering (`filtered`: weight 0, and uncounted, as DAPO's
token-level loss leaves them out of its mask). The sample regime then multiplies w_i by its factor
(lrm_fast/levers/regimes.py).

The study's verl weights each micro-batch m (s_m sequences, T_m response tokens) by its share of the
mini-batch's S sequences (use_dynamic_bsz, dp_actor.py:351-353), on top of core_algos.py's per micro-batch
token mean (masked_mean) or token sum over C (loss_remove_token_mean, core_algos.py:313-314 and 392-393;
C is the padded response length, eos_mask.shape[-1] = the max response length):

    micro_batch_token_mean   w_i = s_m / (S * T_m)           i in micro-batch m (the study's scripts)
    micro_batch_token_sum    w_i = s_m / (S * C)             (Luffy_loss.sh: both settings together)

These two depend on how the mini-batch is cut into micro-batches: equal to token_mean and token_sum with
one micro-batch per mini-batch, they differ by a few percent in gradient on uneven cuts, so they are the
only aggregations exempt from the micro-batch invariance test. `assign_weights` sets their 1 / S;
`weight_micro_batches` multiplies in s_m / T_m or s_m / C once the micro-batches are cut.
"""

from dataclasses import dataclass

import torch

from lrm_fast.config.choices import AdvantageEstimator, AdvantageScale, Aggregation
from lrm_fast.kernels import group_advantages
from lrm_fast.runtime import all_reduce


@dataclass
class Sample:
    """One response and everything the update needs about it."""

    prompt_ids: list[int]
    response_ids: list[int]
    reward: float
    correct: bool
    advantage: float = 0.0
    zero_variance: bool = False
    injected: bool = False  # a stored solution put in by offline sample injection
    regime_weight: float = 1.0  # the sample regime's factor (0: dropped; lrm_fast/regimes.py)
    filtered: bool = False  # out of the loss and its normalisers (DAPO's overlong filtering)
    weight: float = 0.0  # aggregation weight of each of its tokens, times regime_weight
    forward: bool = True  # False: carries no gradient, skipped before the model
    sampler_logprobs: list[float] | None = None  # the rollout engine's log-probs (None: injected)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def assign_advantages(
    samples: list[Sample],
    group_size: int,
    scale: AdvantageScale,
    eps: float = 1e-6,
    estimator: AdvantageEstimator = AdvantageEstimator.grpo,
) -> None:
    """Group-relative advantages and zero-variance flags, written into the samples in place (REINFORCE++'s
    group part: its batch scale is scale_by_batch_std's)."""
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
    baseline = "leave_one_out" if AdvantageEstimator(estimator) == AdvantageEstimator.rloo else "mean"
    result = group_advantages(
        rewards, group_size=group_size, scale=AdvantageScale(scale).value, eps=eps, baseline=baseline
    )
    for sample, advantage, zero_variance in zip(
        samples, result.advantages.tolist(), result.zero_variance.tolist(), strict=True
    ):
        sample.advantage, sample.zero_variance = advantage, zero_variance


def batch_advantage_scale(samples: list[Sample], estimator: AdvantageEstimator) -> dict[str, float]:
    """The estimator's scale over the whole batch, applied in place, as a step metric: REINFORCE++'s batch
    std ({"advantage/batch_std": std}); nothing for the group estimators."""
    if AdvantageEstimator(estimator) != AdvantageEstimator.reinforce_pp:
        return {}
    return {"advantage/batch_std": scale_by_batch_std(samples)}


def scale_by_batch_std(samples: list[Sample], eps: float = 1e-6) -> float:
    """REINFORCE++: every advantage divided by the batch's std of advantages about 0 (module docstring),
    over all ranks' responses. Returns that std; a batch of fewer than 2, or of zero advantages, is left
    as it is."""
    advantages = [s.advantage for s in samples if not s.filtered]
    moments = torch.tensor([len(advantages), sum(a * a for a in advantages)], dtype=torch.float64)
    count, squares = all_reduce(moments).tolist()
    std = (squares / (count - 1)) ** 0.5 if count > 1 else 0.0
    if std > 0:
        for s in samples:
            s.advantage /= std + eps
    return std


# The aggregations whose weights depend on the cut into micro-batches (see the module docstring).
MICRO_BATCH_WEIGHTED = frozenset({Aggregation.micro_batch_token_mean, Aggregation.micro_batch_token_sum})


@dataclass
class Normalisers:
    """Batch-wide counts the weights divide by; summed over ranks before use."""

    num_responses: float
    num_response_tokens: float

    def all_reduce(self) -> "Normalisers":
        return all_reduced([self])[0]


def all_reduced(normalisers: list[Normalisers]) -> list[Normalisers]:
    """Each mini-batch's counts summed over ranks (mini-batch k of every rank together form the global
    mini-batch k), in one collective."""
    counts = torch.tensor(
        [[n.num_responses, n.num_response_tokens] for n in normalisers], dtype=torch.float64
    ).reshape(-1, 2)
    return [Normalisers(*row) for row in all_reduce(counts).tolist()]


def local_normalisers(samples: list[Sample]) -> Normalisers:
    """Responses and response tokens the weights divide by; filtered responses do not count."""
    counted = [s for s in samples if not s.filtered]
    return Normalisers(float(len(counted)), float(sum(len(s.response_ids) for s in counted)))


def assign_weights(
    samples: list[Sample], aggregation: Aggregation, normalisers: Normalisers, sum_norm_length: int
) -> None:
    """Per-token aggregation weight of every response (see the module docstring); for the micro-batch
    weighted aggregations, the 1 / S part only."""
    aggregation = Aggregation(aggregation)  # a ValueError names the valid ones
    for s in samples:
        length = max(len(s.response_ids), 1)
        if aggregation == Aggregation.token_mean:
            s.weight = 1.0 / max(normalisers.num_response_tokens, 1.0)
        elif aggregation == Aggregation.seq_mean_token_mean:
            s.weight = 1.0 / (length * normalisers.num_responses)
        elif aggregation == Aggregation.seq_mean_token_sum_norm:
            s.weight = 1.0 / (sum_norm_length * normalisers.num_responses)
        elif aggregation == Aggregation.token_sum:
            s.weight = 1.0 / sum_norm_length
        else:
            s.weight = 1.0 / max(normalisers.num_responses, 1.0)
        s.weight *= 0.0 if s.filtered else s.regime_weight


def weight_micro_batches(
    micro_batches: list[list[Sample]], aggregation: Aggregation, sum_norm_length: int
) -> None:
    """verl's factor s_m / T_m (or s_m / C) on the weights of micro-batch m's responses, after
    `assign_weights`; nothing for the other aggregations. Call once per cut."""
    aggregation = Aggregation(aggregation)
    if aggregation not in MICRO_BATCH_WEIGHTED:
        return
    for group in micro_batches:
        tokens = sum(len(s.response_ids) for s in group)
        per_token = tokens if aggregation == Aggregation.micro_batch_token_mean else sum_norm_length
        for s in group:
            s.weight *= len(group) / per_token
