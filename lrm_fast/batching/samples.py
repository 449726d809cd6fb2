"""From scored responses to packed micro-batches: advantages, aggregation weights, token budgets.

A step's responses arrive grouped (G consecutive responses per prompt). Advantages always come from the
full group. Each response then gets one aggregation weight, shared by its tokens, whose normaliser is
global: computed over the whole batch on every rank before the micro-batch loop, so that the sum of the
micro-batch losses over all ranks equals the loss of the whole batch at once.

    token_mean               w_i = 1 / (sum_j L_j)           every token counts the same (DAPO)
    seq_mean_token_mean      w_i = 1 / (L_i * S)             every sequence counts the same (GRPO)
    seq_mean_token_sum_norm  w_i = 1 / (C * S)               sum of tokens over a constant (Dr. GRPO)

L_i is response i's length, S the number of responses and C a constant length, all over the full batch
(responses that are not forwarded still count: dropping them changes no other response's weight). The
sample regime then multiplies w_i by its factor (lrm_fast/regimes.py).
"""

import math
from dataclasses import dataclass

import torch

from lrm_fast.distributed import all_reduce
from lrm_fast.kernels import group_advantages

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


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


def assign_advantages(samples: list[Sample], group_size: int, scale: str, eps: float = 1e-6) -> None:
    """Group-relative advantages and zero-variance flags, written into the samples in place."""
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
    result = group_advantages(rewards, group_size=group_size, scale=scale, eps=eps)
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
    samples: list[Sample], aggregation: str, normalisers: Normalisers, sum_norm_length: int
) -> None:
    """Per-token aggregation weight of every response (see the module docstring)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"loss.aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    for s in samples:
        length = max(len(s.response_ids), 1)
        if aggregation == "token_mean":
            s.weight = 1.0 / max(normalisers.num_response_tokens, 1.0)
        elif aggregation == "seq_mean_token_mean":
            s.weight = 1.0 / (length * normalisers.num_responses)
        else:
            s.weight = 1.0 / (sum_norm_length * normalisers.num_responses)
        s.weight *= s.regime_weight


def micro_batches(samples: list[Sample], token_budget: int) -> list[list[Sample]]:
    """Greedy packing of the forwarded samples into padded micro-batches of at most `token_budget`
    tokens (batch size x longest sequence); a sample longer than the budget goes alone."""
    batches, current, longest = [], [], 0
    for s in (s for s in samples if s.forward and s.response_ids):
        new_longest = max(longest, s.num_tokens)
        if current and (len(current) + 1) * new_longest > token_budget:
            batches.append(current)
            current, new_longest = [], s.num_tokens
        current.append(s)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


@dataclass
class MicroBatch:
    """Model inputs (padded, or packed: lrm_fast/packing.py) plus the loss kernels' response-token layout."""

    input_ids: torch.Tensor  # [b, L] right-padded prompt + response; packed: [1, T], T = sum of lengths
    attention_mask: torch.Tensor | None  # [b, L]; None when packed
    row: torch.Tensor  # [N] row in the batch of each response token
    position: torch.Tensor  # [N] position of the logits that predict it
    targets: torch.Tensor  # [N] the response tokens
    advantages: torch.Tensor  # [N] fp32
    weights: torch.Tensor  # [N] fp32
    injected: torch.Tensor  # [N] bool: tokens of injected responses
    position_ids: torch.Tensor | None = None  # packed: [1, T], restarting at 0 for every sequence
    cu_seqlens: torch.Tensor | None = None  # packed: [S + 1] int32, start of each sequence, then T
    max_seqlen: int = 0  # packed: longest sequence
    sampler_logprobs: torch.Tensor | None = None  # [N] fp32, NaN where unknown; None: not compared

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None


def sampler_logprobs(samples: list[Sample]) -> torch.Tensor:
    """[N] the rollout engine's log-prob of every response token, in the kernels' order (NaN for
    responses it did not sample)."""
    values = []
    for s in samples:
        known = s.sampler_logprobs is not None
        values += s.sampler_logprobs if known else [math.nan] * len(s.response_ids)
    return torch.tensor(values, dtype=torch.float32)


def collate(samples: list[Sample], pad_id: int) -> MicroBatch:
    longest = max(s.num_tokens for s in samples)
    input_ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    rows, positions, targets, advantages, weights, injected = [], [], [], [], [], []
    for i, s in enumerate(samples):
        ids = s.prompt_ids + s.response_ids
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        start = len(s.prompt_ids) - 1  # logits at position p predict token p + 1
        rows += [i] * len(s.response_ids)
        positions += range(start, start + len(s.response_ids))
        targets += s.response_ids
        advantages += [s.advantage] * len(s.response_ids)
        weights += [s.weight] * len(s.response_ids)
        injected += [s.injected] * len(s.response_ids)
    return MicroBatch(
        input_ids,
        attention_mask,
        torch.tensor(rows),
        torch.tensor(positions),
        torch.tensor(targets),
        torch.tensor(advantages, dtype=torch.float32),
        torch.tensor(weights, dtype=torch.float32),
        torch.tensor(injected, dtype=torch.bool),
    )
