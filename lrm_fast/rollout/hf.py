"""Rollout backend on transformers ``generate``: the CPU default, and a fallback anywhere.

Each prompt is repeated G times (consecutively), left-padded into one batch, and sampled with the KV
cache; generation stops as soon as every row has produced an EOS token, or at max_new_tokens.

Log-probs of the sampled tokens come from the scores generate actually samples from (the logits
after temperature and top-p), as ``output_scores`` would give them. ``output_scores`` keeps a
[rows, V] tensor per step (gigabytes at V = 152k and a few thousand steps), so a logits processor
placed last in the chain records instead only the sampled token's log-prob, one step late: at step
t the token drawn at step t-1 is the last column of ``input_ids``. Memory is one [rows] vector per
step. For that processor to be last, temperature and top-p are applied by processors we pass, and
generate's own copies are switched off.

Simplifications: the model's ``generation_config`` sampling defaults (top_k, repetition penalty,
temperature, ...) are overridden, so that the sampling distribution is exactly
softmax(top_p(logits / T)); rows are not sorted by length before batching; a different model object
passed to ``sync_weights`` is copied with ``load_state_dict`` (no sharded or cross-device transfer).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from lrm_fast.rollout import Rollout, SamplingParams


class SampledLogprobs(LogitsProcessor):
    """Records log pi(token) of each sampled token; must be the last logits processor."""

    def __init__(self, prompt_length: int):
        self.prompt_length = prompt_length
        self.steps: list[torch.Tensor] = []  # [rows] per generated token
        self._scores: torch.Tensor | None = None  # [rows, V] of the last step
        self._log_normalizer: torch.Tensor | None = None  # [rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_length:
            self._record(input_ids[:, -1])  # the token drawn from the previous step's scores
        self._scores, self._log_normalizer = scores, torch.logsumexp(scores, dim=-1)
        return scores

    def _record(self, tokens: torch.Tensor) -> None:
        sampled_scores = self._scores.gather(1, tokens[:, None]).squeeze(1)
        self.steps.append(sampled_scores - self._log_normalizer)

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """Log-probs [rows, new tokens] of the tokens generate returned."""
        num_new = sequences.shape[1] - self.prompt_length
        if len(self.steps) < num_new:
            self._record(sequences[:, -1])  # the last token's step never came
        return torch.stack(self.steps[:num_new], dim=1)


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
        ``max_batch_size`` bounds the rows (prompts x G) of one generate call; None: all at once."""
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = sorted(set(eos_token_ids or _default_eos_ids(model, tokenizer)))
        if not self.eos_token_ids:
            raise ValueError("no EOS token: the tokenizer has none, so pass eos_token_ids")
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        )
        self.max_batch_size = max_batch_size

    def decode(self, token_ids: list[int]) -> str:
        # Special tokens (EOS, padding) carry no answer; </think> is a normal added token and stays.
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is self.model:
            return  # generate reads the trainer's parameters directly
        self.model.load_state_dict(model.state_dict())

    def generate(self, prompts: list[list[int]], group_size: int, params: SamplingParams) -> list[Rollout]:
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
            with _seeded(params.seed, device), torch.inference_mode():
                rollouts = []
                for start in range(0, len(rows), chunk):
                    rollouts += self._sample(rows[start : start + chunk], params, device)
                return rollouts
        finally:
            self.model.train(was_training)

    def _sample(self, rows: list[list[int]], params: SamplingParams, device: torch.device) -> list[Rollout]:
        """One generate call over ``rows`` prompts (already repeated per group)."""
        input_ids, attention_mask = _left_pad(rows, self.pad_token_id, device)
        recorder = SampledLogprobs(prompt_length=input_ids.shape[1])
        sequences = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=self._generation_config(params),
            logits_processor=_sampling_processors(params, recorder),
        )
        logprobs = recorder.finish(sequences)  # [rows, T]
        responses = sequences[:, input_ids.shape[1] :]  # [rows, T]
        lengths, finished = _response_lengths(responses, self.eos_token_ids)
        return [
            Rollout(prompt_ids=prompt, response_ids=ids[:length], logprobs=lps[:length], finished=done)
            for prompt, ids, lps, length, done in zip(
                rows, responses.tolist(), logprobs.tolist(), lengths.tolist(), finished.tolist(), strict=True
            )
        ]

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        # Neutral values for everything checkpoints commonly set: a value left None would be filled in
        # from the checkpoint's generation_config (Qwen2.5 ships top_k=20, repetition_penalty=1.05).
        return GenerationConfig(
            do_sample=True,
            max_new_tokens=params.max_new_tokens,
            temperature=1.0,  # applied by our processors, before the recorder
            top_p=1.0,
            top_k=0,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_new_tokens=0,
            renormalize_logits=False,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            use_cache=True,
        )


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


def _default_eos_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    config_eos = [config_eos] if isinstance(config_eos, int) else list(config_eos or [])
    tokenizer_eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return tokenizer_eos + config_eos


def _sampling_processors(params: SamplingParams, recorder: SampledLogprobs) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    if params.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(params.temperature))
    if params.top_p < 1.0:
        processors.append(TopPLogitsWarper(params.top_p))
    processors.append(recorder)
    return processors


def _left_pad(
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


def _response_lengths(responses: torch.Tensor, eos_token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens up to and including the first EOS ([rows]), and whether there was one ([rows] bool)."""
    is_eos = torch.isin(responses, torch.tensor(eos_token_ids, device=responses.device))  # [rows, T]
    finished = is_eos.any(dim=1)
    first_eos = is_eos.int().argmax(dim=1)
    lengths = torch.where(finished, first_eos + 1, responses.shape[1])
    return lengths, finished
