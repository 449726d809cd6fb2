"""Rollout backend on a transformers causal LM: the CPU default, and a fallback anywhere.

Each prompt is repeated G times (consecutively), left-padded into one batch and sampled token by
token with the model's KV cache. The decode loop is ours rather than ``generate``'s, for two reasons:

- Rows that have produced an EOS leave the batch (their KV-cache rows are dropped), so a step costs
  what the unfinished rows cost. Response lengths vary a lot (a few correct answers are short, a few
  wrong ones run to the limit); ``generate`` keeps every row to the end, which made sampling the tiny
  model about 2x slower.
- The sampled token's log-prob is read off the very distribution it was drawn from,
  ``log softmax(top_p(logits / T))``, with no logits-processor bookkeeping, and nothing the
  checkpoint's ``generation_config`` sets (top_k, repetition penalty, ...) leaks in.

Greedy decoding (evaluation's greedy column) runs the same loop with argmax in place of the draw.

Simplifications: rows are not sorted by length before batching; a different model object passed to
``sync_weights`` is copied with ``load_state_dict`` (no sharded or cross-device transfer).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import DynamicCache

from lrm_fast.rollout.base import NonFiniteError, Rollout, SamplingParams


class HFRolloutBackend:
    """``RolloutBackend`` on a transformers causal LM (shared with the trainer or a separate copy)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        eos_token_ids: Sequence[int] | None = None,
        max_batch_size: int | None = None,
    ):
        """``eos_token_ids`` defaults to the tokenizer's EOS plus those of the model's generation
        config (chat models often end a turn with a token other than the tokenizer's EOS).
        ``max_batch_size`` bounds the rows (prompts x G) sampled together; None: all at once."""
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = sorted(set(eos_token_ids or _default_eos_ids(model, tokenizer)))
        if not self.eos_token_ids:
            raise ValueError("no EOS token: the tokenizer has none, so pass eos_token_ids")
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        )
        self.max_batch_size = max_batch_size
        self._cache_argument = _cache_argument(model)

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is self.model:
            return  # the sampler reads the trainer's parameters directly
        self.model.load_state_dict(model.state_dict())

    def generate(self, prompts: list[list[int]], group_size: int, params: SamplingParams) -> list[Rollout]:
        draw = functools.partial(_draw, temperature=params.temperature, top_p=params.top_p)
        return self._decode(prompts, group_size, params.max_new_tokens, draw, params.seed)

    def greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], bool]]:
        """The argmax decoding of each prompt (SamplingParams has no greedy mode: temperature must be > 0,
        and a tiny temperature is not argmax, because of ties and underflow)."""
        rollouts = self._decode(prompts, 1, max_new_tokens, _argmax, seed=None)
        return [(r.response_ids, r.finished) for r in rollouts]

    def _decode(self, prompts, group_size: int, max_new_tokens: int, draw, seed: int | None) -> list[Rollout]:
        """``group_size`` responses per prompt, each token chosen by ``draw``, in batches of rows."""
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if any(len(prompt) == 0 for prompt in prompts):
            raise ValueError("every prompt needs at least one token")
        rows = [list(prompt) for prompt in prompts for _ in range(group_size)]
        chunk = self.max_batch_size or max(len(rows), 1)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling
        try:
            with _seeded(seed, device), torch.inference_mode():
                rollouts = []
                for start in range(0, len(rows), chunk):
                    rollouts += self._sample(rows[start : start + chunk], max_new_tokens, draw, device)
                return rollouts
        finally:
            self.model.train(was_training)

    def _sample(
        self, rows: list[list[int]], max_new_tokens: int, draw, device: torch.device
    ) -> list[Rollout]:
        """Responses to ``rows`` (prompts already repeated per group) until EOS or the limit."""
        input_ids, attention_mask = left_pad(rows, self.pad_token_id, device)
        positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding shifts positions
        eos = torch.tensor(self.eos_token_ids, device=device)
        tokens = torch.full((len(rows), max_new_tokens), self.pad_token_id, device=device)
        logprobs = torch.zeros((len(rows), max_new_tokens), device=device)
        lengths = torch.full((len(rows),), max_new_tokens, device=device)
        active = torch.arange(len(rows), device=device)  # original row of each batch row
        cache = DynamicCache()
        logits = self._forward(input_ids, attention_mask, positions, cache)
        next_position = positions[:, -1:] + 1
        for t in range(max_new_tokens):
            token, logprob = draw(logits)
            tokens[active, t], logprobs[active, t] = token, logprob
            ended = torch.isin(token, eos)
            if ended.any():
                lengths[active[ended]] = t + 1
                keep = (~ended).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                cache.batch_select_indices(keep)  # finished rows leave the batch
                active, token = active[keep], token[keep]
                attention_mask, next_position = attention_mask[keep], next_position[keep]
            if t + 1 == max_new_tokens:
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
            logits = self._forward(token[:, None], attention_mask, next_position, cache)
            next_position = next_position + 1
        finished = torch.isin(tokens, eos).any(dim=1)
        return [
            Rollout(prompt_ids=prompt, response_ids=ids[:length], logprobs=lps[:length], finished=done)
            for prompt, ids, lps, length, done in zip(
                rows, tokens.tolist(), logprobs.tolist(), lengths.tolist(), finished.tolist(), strict=True
            )
        ]

    def _forward(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        """Logits [rows, V] of the last position, in float32; NonFiniteError if any is NaN or infinite
        (a diverged policy: the caller rolls back, lrm_fast/training/guard.py)."""
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_argument: cache},
        )
        logits = output.logits[:, -1].float()
        if not torch.isfinite(logits).all():
            raise NonFiniteError("non-finite logits while sampling")
        return logits


def _argmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The most probable token per row (greedy decoding; its log-prob is not needed, so 0)."""
    return logits.argmax(dim=-1), torch.zeros(len(logits), device=logits.device)


def _draw(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from softmax(top_p(logits / T)), and its log-prob under that distribution (drawn
    from `generator`; None: the global one)."""
    scores = logits / temperature
    if top_p < 1.0:
        scores = _top_p_filter(scores, top_p)
    logp = torch.log_softmax(scores, dim=-1)
    token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
    return token, logp.gather(1, token[:, None]).squeeze(1)


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most probable tokens until their mass reaches top_p (always at least one)."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    sorted_probs = sorted_scores.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more probable tokens
    keep = torch.zeros_like(sorted_probs, dtype=torch.bool).scatter(1, order, mass_before < top_p)
    return scores.masked_fill(~keep, float("-inf"))


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Sample from a generator seeded with ``seed`` and restore the global state afterwards;
    seed=None samples from (and advances) the global generator."""
    if seed is None:
        yield
        return
    accelerators = [device] if device.type != "cpu" else []
    with torch.random.fork_rng(devices=accelerators, device_type=device.type if accelerators else None):
        torch.manual_seed(seed)
        yield


def _cache_argument(model: torch.nn.Module) -> str:
    """The name under which ``forward`` takes the KV cache: ``cache`` from transformers 5.24 on, where
    ``past_key_values`` warns (FutureWarning) until its removal in 5.40; ``past_key_values`` before,
    which vLLM's CPU build still needs (transformers < 5.20). Read off the signature rather than the
    version: a model class not yet renamed (remote code) could take ``cache`` into its ``**kwargs``
    and decode without the cache, silently."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _default_eos_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    config_eos = [config_eos] if isinstance(config_eos, int) else list(config_eos or [])
    tokenizer_eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return tokenizer_eos + config_eos


def left_pad(
    rows: list[list[int]], pad_token_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [rows, longest prompt], prompts right-aligned so that new tokens
    of every row are appended at the same column."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)
