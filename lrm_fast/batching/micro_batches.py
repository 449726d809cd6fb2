"""Micro-batches: the forwarded responses of a step, under a token budget, as model inputs plus the loss
kernels' packed layout of their response tokens (only response tokens, flattened: N of them).

Two layouts of the model inputs, chosen by `loss.packing`:

    padded  [b, L] right-padded rows with an attention mask; the budget counts b x L (padding included)
    packed  every sequence of the micro-batch end to end in one row [1, T], T = sum_i L_i, no padding

A padded micro-batch spends b * L tokens of compute on sum_i L_i real ones; with response lengths that
vary by 10x (long reasoning traces) most of it is padding. A packed row carries position_ids restarting at
0 for every sequence (so rotary embeddings see each sequence as if it were alone) and the boundaries in
cu_seqlens [S + 1] (int32, cu_seqlens[i] = start of sequence i); attention must then stay inside each
sequence (lrm_fast/model/attention.py).
"""

import math
from dataclasses import dataclass

import torch

from lrm_fast.batching import samples as B
from lrm_fast.batching.samples import Sample


def mini_batches(samples: list[Sample], group_size: int, count: int) -> list[list[Sample]]:
    """The step's responses cut into `count` contiguous mini-batches of whole groups (as equal in groups
    as their number allows), one optimizer step each: verl's batch.split(ppo_mini_batch_size)
    (dp_actor.py:255), without its balance_batch reordering, which scatters a group's responses over ranks
    and mini-batches. A rank with fewer groups than `count` gets empty mini-batches."""
    groups = [samples[i : i + group_size] for i in range(0, len(samples), group_size)]
    bounds = [k * len(groups) // count for k in range(count + 1)]
    return [[s for group in groups[bounds[k] : bounds[k + 1]] for s in group] for k in range(count)]


def micro_batches(samples: list[Sample], token_budget: int, packed: bool) -> list[list[Sample]]:
    """Greedy, in order: the samples (those with a response) into micro-batches of at most `token_budget`
    tokens (rows x longest sequence when padded, the sum of lengths when packed); a longer sample goes
    alone."""
    batches, current, longest, tokens = [], [], 0, 0
    for s in (s for s in samples if s.response_ids):
        new_longest, new_tokens = max(longest, s.num_tokens), tokens + s.num_tokens
        cost = new_tokens if packed else (len(current) + 1) * new_longest
        if current and cost > token_budget:
            batches.append(current)
            current, new_longest, new_tokens = [], s.num_tokens, s.num_tokens
        current.append(s)
        longest, tokens = new_longest, new_tokens
    if current:
        batches.append(current)
    return batches


def weighted_micro_batches(
    samples: list[Sample],
    aggregation,
    normalisers: B.Normalisers,
    sum_norm_length: int,
    token_budget: int,
    packed: bool,
) -> list[list[Sample]]:
    """One mini-batch's forwarded samples cut into micro-batches, every token weighted (Sample.weight).

    The cut that the micro-batch weighted aggregations (the study's) divide by is over every response the
    regime keeps and nothing filtered, zero-variance ones included, as in the study's micro-batches
    (dp_actor.py: every response of the mini-batch is in one of them); only then are the responses that
    are not forwarded (regime.drop_zero_variance) taken out, so dropping them changes no weight. For the
    other aggregations the cut is a matter of memory alone, over the forwarded responses."""
    B.assign_weights(samples, aggregation, normalisers, sum_norm_length)
    if aggregation not in B.MICRO_BATCH_WEIGHTED:
        return micro_batches([s for s in samples if s.forward], token_budget, packed)
    kept = [s for s in samples if s.regime_weight > 0 and not s.filtered]
    groups = micro_batches(kept, token_budget, packed)
    B.weight_micro_batches(groups, aggregation, sum_norm_length)
    forwarded = [[s for s in group if s.forward] for group in groups]
    return [group for group in forwarded if group]


@dataclass
class MicroBatch:
    """Model inputs (padded or packed) plus the loss kernels' response-token layout."""

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
    # [N] fp32 log-probs of the policy before the rollout batch's first optimizer step (pi_old), recorded
    # when there are several steps; None: one step, on-policy (the ratio's denominator is logp itself).
    old_logprobs: torch.Tensor | None = None

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    def sequence_index(self) -> torch.Tensor:
        """[N] int64 index of each response token's sequence: its row when padded, the packed sequence
        whose span [cu_seqlens[i], cu_seqlens[i + 1]) holds its position when packed."""
        if not self.packed:
            return self.row.long()
        starts = self.cu_seqlens.to(self.position.device, torch.int64)
        return torch.searchsorted(starts, self.position.long(), right=True) - 1


def sampler_logprobs(samples: list[Sample]) -> torch.Tensor:
    """[N] the rollout engine's log-prob of every response token, in the kernels' order (NaN for
    responses it did not sample)."""
    values = []
    for s in samples:
        known = s.sampler_logprobs is not None
        values += s.sampler_logprobs if known else [math.nan] * len(s.response_ids)
    return torch.tensor(values, dtype=torch.float32)


def collate(samples: list[Sample], packed: bool, pad_id: int = 0) -> MicroBatch:
    """The micro-batch of `samples`: padded rows (padding `pad_id`) or one packed row, and the kernels'
    layout of their response tokens (the row and position of the logits that predict each)."""
    rows, positions, targets, advantages, weights, injected = [], [], [], [], [], []
    offset = 0  # packed: where the sequence starts in the row
    for i, s in enumerate(samples):
        start = offset + len(s.prompt_ids) - 1  # logits at position p predict token p + 1
        n = len(s.response_ids)
        rows += [0 if packed else i] * n
        positions += range(start, start + n)
        targets += s.response_ids
        advantages += [s.advantage] * n
        weights += [s.weight] * n
        injected += [s.injected] * n
        offset += s.num_tokens if packed else 0
    layout = dict(
        row=torch.tensor(rows, dtype=torch.long),
        position=torch.tensor(positions, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        advantages=torch.tensor(advantages, dtype=torch.float32),
        weights=torch.tensor(weights, dtype=torch.float32),
        injected=torch.tensor(injected, dtype=torch.bool),
    )
    return (
        MicroBatch(**_packed_inputs(samples), **layout)
        if packed
        else MicroBatch(**_padded_inputs(samples, pad_id), **layout)
    )


def _padded_inputs(samples: list[Sample], pad_id: int) -> dict:
    longest = max(s.num_tokens for s in samples)
    input_ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for i, s in enumerate(samples):
        input_ids[i, : s.num_tokens] = torch.tensor(s.prompt_ids + s.response_ids)
        attention_mask[i, : s.num_tokens] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _packed_inputs(samples: list[Sample]) -> dict:
    lengths = [s.num_tokens for s in samples]
    cu_seqlens = torch.zeros(len(samples) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(lengths).cumsum(0)
    return {
        "input_ids": torch.tensor([[t for s in samples for t in s.prompt_ids + s.response_ids]]),
        "attention_mask": None,
        "position_ids": torch.tensor([[p for length in lengths for p in range(length)]]),
        "cu_seqlens": cu_seqlens,
        "max_seqlen": max(lengths),
    }


def model_inputs(batch: MicroBatch) -> dict:
    """Keyword arguments of the model's forward: the padding mask, or the packed positions and
    boundaries (transformers passes the cu_seq_lens / max_length keywords down to the attention)."""
    if not batch.packed:
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    return {
        "input_ids": batch.input_ids,
        "position_ids": batch.position_ids,
        "cu_seq_lens_q": batch.cu_seqlens,
        "cu_seq_lens_k": batch.cu_seqlens,
        "max_length_q": batch.max_seqlen,
        "max_length_k": batch.max_seqlen,
    }
