"""SFT cold start of the embedded default: supervised fine-tuning on a built-in task's teacher solutions.

The study starts GRPO from an R1-distilled model; the embedded default stands in for it with a short
SFT run of the tiny model on a teacher's solutions of the built-in task the run trains on: arithmetic,
or long_arithmetic (the type of the task settings passed in says which). Each example is the
chat-formatted prompt followed by the solution and the end-of-sequence token; the loss is the mean
cross-entropy over the response tokens of the batch (prompt and padding carry no loss). Batches are
padded on the right with an attention mask, and drawn from length-sorted windows so that they pad
little. AdamW, linear warmup, then a constant or cosine learning rate.

`cached_cold_start` builds tokenizer + model, trains, and saves both under a directory named by a
hash of every setting, so a second run with the same settings loads instead of training. The save
goes to a temporary directory renamed into place at the end: a run killed midway leaves only a
``.tmp-*`` directory, which is never taken as a cache.
"""

import hashlib
import json
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lrm_fast.config import ColdStartConfig, LongDifficultyConfig, TinyModelConfig
from lrm_fast.config.choices import DataSource
from lrm_fast.data.arithmetic import Problem
from lrm_fast.data.sources import BuiltinTask, task_module
from lrm_fast.data.tokenizer import build_tokenizer, require_known
from lrm_fast.model.causal_lm import build_model, tiny_qwen2_config
from lrm_fast.model.optim import adamw

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

CACHE_VERSION = 5
"""Part of the cache key: bump it when the task format, tokenizer or training code changes what a
cold start contains, so that old caches are not reused. 5: the saved tokenizer became a byte-level
BPE (the same ids, so the same model, but tokenizer.json files of 4 load wrongly in transformers 5)."""


# At the size budget: set-up checks, then the loop; split, the loop would need them passed back in.
def run_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    cfg: ColdStartConfig,
    *,
    log_every: int = 50,
) -> list[float]:
    """Train `model` in place on prompt + solution of `problems`; returns the loss of every step."""
    # Without it, CPU steps got about 10x slower after a few updates (denormal floats in Adam state).
    if not torch.set_flush_denormal(True):
        logger.warning("this CPU cannot flush denormals: SFT may slow down after a few steps")
    examples = [encode_example(tokenizer, problem) for problem in problems]
    lengths = [len(ids) for ids, _ in examples]
    if max(lengths) > model.config.max_position_embeddings:
        raise ValueError(f"an example has {max(lengths)} tokens > max_position_embeddings")
    optimizer, scheduler = adamw(
        model.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        steps=cfg.steps,
        schedule=cfg.schedule,
    )
    batches = _batches(lengths, cfg.batch_size, cfg.length_group, torch.Generator().manual_seed(cfg.seed))
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        batch = collate([examples[i] for i in next(batches)], tokenizer.pad_token_id)
        loss = response_loss(model, *batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % log_every == 0 or step == cfg.steps:
            seconds = time.perf_counter() - start
            logger.info("sft step %d/%d loss %.4f %.1fs", step, cfg.steps, losses[-1], seconds)
    model.eval()
    return losses


def encode_example(tokenizer: PreTrainedTokenizerBase, problem: Problem) -> tuple[list[int], int]:
    """Token ids of chat prompt + solution + eos, and the number of prompt tokens."""
    require_known(tokenizer, problem.problem)
    require_known(tokenizer, problem.solution)
    messages = [{"role": "user", "content": problem.problem}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(problem.solution + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return prompt_ids + response_ids, len(prompt_ids)


def collate(examples: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded input_ids, attention_mask and labels [B, L]; labels are IGNORE_INDEX off the response."""
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, num_prompt) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, num_prompt : len(ids)] = torch.tensor(ids[num_prompt:])
    return input_ids, attention_mask, labels


def response_loss(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (response) tokens of the batch."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, L, V]
    # Position t predicts token t + 1.
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )


def _batches(
    lengths: Sequence[int], batch_size: int, group: int, generator: torch.Generator
) -> Iterator[list[int]]:
    """Endless batches of example indices over shuffled epochs (a batch may span two epochs).

    Each window of `group` batches is sorted by length before it is cut, so that a batch pads to
    little (HF's group_by_length); the batches of a window come out in random order. With the
    arithmetic task this cut padded tokens per step by about 40% for the same held-out accuracy
    after the same number of steps.
    """
    # A window larger than the data would hold repeats of one example, sorted next to each other.
    group = max(1, min(group, len(lengths) // batch_size))
    order: list[int] = []
    window = batch_size * group
    while True:
        while len(order) < window:
            order += torch.randperm(len(lengths), generator=generator).tolist()
        chunk, order = sorted(order[:window], key=lengths.__getitem__), order[window:]
        for k in torch.randperm(group, generator=generator).tolist():
            yield chunk[k * batch_size : (k + 1) * batch_size]


def task_settings(task: BuiltinTask) -> dict:
    """A task's part of the cache key and the record: its settings, and its name for the long task (the
    arithmetic task's keys were made before there was a second task, and stay as they were)."""
    settings = asdict(task)
    if isinstance(task, LongDifficultyConfig):
        settings["name"] = DataSource.long_arithmetic.value
    return settings


def cold_start_key(task: BuiltinTask, sft: ColdStartConfig, model: TinyModelConfig) -> str:
    """A short hash of every setting that changes what a cold start contains (not where it is kept)."""
    sft_settings = _sft_settings(sft)
    settings = {
        "version": CACHE_VERSION,
        "task": task_settings(task),
        "sft": sft_settings,
        "model": asdict(model),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _sft_settings(cfg: ColdStartConfig) -> dict:
    """The SFT settings of the key and the record: all but cache_dir, and max_response_tokens only when
    set (it came after caches of the embedded default existed, whose key stays as it was)."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "cache_dir"}
    if settings["max_response_tokens"] is None:
        del settings["max_response_tokens"]
    return settings


def cache_root(cfg: ColdStartConfig) -> Path:
    """Where cold starts are kept: cold_start.cache_dir, else $LRM_FAST_CACHE/cold_start, else
    ~/.cache/lrm_fast/cold_start."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("LRM_FAST_CACHE", "~/.cache/lrm_fast")).expanduser() / "cold_start"


def teacher_problems(
    task: BuiltinTask, cfg: ColdStartConfig, tokenizer: PreTrainedTokenizerBase
) -> list[Problem]:
    """The SFT data: the teacher's solutions of `cfg.num_problems` training problems of `task`, less those
    whose response (end-of-sequence token included) is longer than `cfg.max_response_tokens`."""
    module = task_module(task)
    problems = module.generate_problems(cfg.num_problems, split="train", seed=cfg.seed, settings=task)
    rng = random.Random(cfg.seed)
    solved = [
        module.teacher_solution(p, rng, cfg.slip_prob, cfg.check_prob, cfg.space_prob) for p in problems
    ]
    if cfg.max_response_tokens is None:
        return solved
    kept = [p for p in solved if _response_tokens(tokenizer, p) <= cfg.max_response_tokens]
    if not kept:
        raise ValueError(
            f"cold_start.max_response_tokens={cfg.max_response_tokens} keeps none of the teacher's "
            f"{len(solved)} solutions"
        )
    return kept


def _response_tokens(tokenizer: PreTrainedTokenizerBase, problem: Problem) -> int:
    return len(tokenizer(problem.solution + tokenizer.eos_token, add_special_tokens=False)["input_ids"])


def cached_cold_start(
    task: BuiltinTask, cfg: ColdStartConfig, shape: TinyModelConfig, *, log_every: int = 50
) -> Path:
    """The directory of a trained cold start (model + tokenizer), training it only if not cached."""
    final = cache_root(cfg) / f"cold-start-{cold_start_key(task, cfg, shape)}"
    if final.is_dir():
        logger.info("reusing SFT cold start %s", final)
        return final
    tokenizer = build_tokenizer()
    config = tiny_qwen2_config(
        len(tokenizer), shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    model = build_model(config, seed=cfg.seed)
    losses = run_sft(model, tokenizer, teacher_problems(task, cfg, tokenizer), cfg, log_every=log_every)
    sft_settings = _sft_settings(cfg)
    record = {"task": task_settings(task), "sft": sft_settings, "model": asdict(shape), "losses": losses}
    _save_atomically(model, tokenizer, record, final)
    logger.info("saved SFT cold start %s", final)
    return final


def _save_atomically(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, record: dict, final: Path
) -> None:
    """Save into a staging directory, then rename it to `final` in one step.

    Readers only ever see `final` complete or absent. If another process published first, its
    copy (trained from the same settings) is kept.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would keep a shared cache private to one user.
    staging = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "cold_start.json").write_text(json.dumps(record, indent=1))
        os.rename(staging, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        # Gone after a successful rename; otherwise a failed or losing copy.
        shutil.rmtree(staging, ignore_errors=True)
