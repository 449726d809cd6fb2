"""Scored responses: group advantages and the aggregation weight of every response.

A step's responses arrive grouped (G consecutive responses per prompt). Advantages always come from the
full group. Each response then gets one aggregation weight, shared by its tokens, whose normaliser is
global: computed over the whole batch on every rank before the micro-batch loop, so that the sum of the
micro-batch losses over all ranks equals the loss of the whole batch at once.

    token_mean               w_i = 1 / (sum_j L_j)           every token counts the same (DAPO)
    seq_mean_token_mean      w_i = 1 / (L_i * S)             every sequence counts the same (GRPO)
    seq_mean_token_sum_norm  w_i = 1 / (C * S)               sum of tokens over a constant (Dr. GRPO)

L_i is response i's length, S the number of responses and C a constant length, all over the full batch
(responses that are not forwarded still count: dropping them changes no other response's weight). The
sample regime then multiplies w_i by its factor (lrm_fast/levers/regimes.py).
"""

from dataclasses import dataclass

import torch

from lrm_fast.config.choices import AdvantageScale, Aggregation
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
    weight: float = 0.0  # aggregation weight of each of its tokens, times regime_weight
    forward: bool = True  # False: carries no gradient, skipped before the model
    sampler_logprobs: list[float] | None = None  # the rollout engine's log-probs (None: injected)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def assign_advantages(
    samples: list[Sample], group_size: int, scale: AdvantageScale, eps: float = 1e-6
) -> None:
    """Group-relative advantages and zero-variance flags, written into the samples in place."""
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
    result = group_advantages(rewards, group_size=group_size, scale=AdvantageScale(scale).value, eps=eps)
    for sample, advantage, zero_variance in zip(
        samples, result.advantages.tolist(), result.zero_variance.tolist(), strict=True
    ):
        sample.advantage, sample.zero_variance = advantage, zero_variance


@dataclass
class Normalisers:
    """Batch-wide counts the weights divide by; summed over ranks before use."""

    num_responses: float
    num_response_tokens: float

    def all_reduce(self) -> "Normalisers":
        counts = torch.tensor([self.num_responses, self.num_response_tokens], dtype=torch.float64)
        return Normalisers(*all_reduce(counts).tolist())


def local_normalisers(samples: list[Sample]) -> Normalisers:
    return Normalisers(float(len(samples)), float(sum(len(s.response_ids) for s in samples)))


def assign_weights(
    samples: list[Sample], aggregation: Aggregation, normalisers: Normalisers, sum_norm_length: int
) -> None:
    """Per-token aggregation weight of every response (see the module docstring)."""
    aggregation = Aggregation(aggregation)  # a ValueError names the valid ones
    for s in samples:
        length = max(len(s.response_ids), 1)
        if aggregation == Aggregation.token_mean:
            s.weight = 1.0 / max(normalisers.num_response_tokens, 1.0)
        elif aggregation == Aggregation.seq_mean_token_mean:
            s.weight = 1.0 / (length * normalisers.num_responses)
        else:
            s.weight = 1.0 / (sum_norm_length * normalisers.num_responses)
        s.weight *= s.regime_weight
