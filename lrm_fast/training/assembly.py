"""Building the parts a run needs from its typed config: policy, tokenizer, prompts, optimizer."""

import math
from dataclasses import asdict
from pathlib import Path

import torch

from lrm_fast.config import ColdStartConfig, DataConfig, ModelConfig, TrainConfig, TrainerConfig
from lrm_fast.data import Columns, PromptExample, encode_prompts, load_prompts
from lrm_fast.model import TinyModelSettings, load_model
from lrm_fast.rollout.hf import HFRolloutBackend
from lrm_fast.runtime import DEFAULT_THREADS
from lrm_fast.sft import SFTSettings, cached_cold_start
from lrm_fast.tasks.arithmetic import ArithmeticSettings, generate_problems, solutions
from lrm_fast.tokenizer import load_tokenizer


def task_settings(data: DataConfig) -> ArithmeticSettings:
    return ArithmeticSettings(**asdict(data.difficulty))


def sft_settings(cold_start: ColdStartConfig) -> SFTSettings:
    return SFTSettings(**{k: v for k, v in asdict(cold_start).items() if k != "cache_dir"})


def cold_start_dir(cfg: TrainConfig) -> Path:
    """The cached SFT cold start of the tiny model (trained here on first use).

    SFT runs on every core (torch's default thread count): its batches are large enough to gain from
    them, unlike sampling from the tiny model, for which trainer.num_threads may have set fewer."""
    # Under torchrun the main rank trains it once while the others wait (they would race on the cache).
    distributed = torch.distributed.is_initialized()
    if distributed and torch.distributed.get_rank() != 0:
        torch.distributed.barrier()
    threads = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_THREADS)
    try:
        path = cached_cold_start(
            Path(cfg.cold_start.cache_dir).expanduser(),
            task_settings(cfg.data),
            sft_settings(cfg.cold_start),
            TinyModelSettings(**asdict(cfg.model.tiny)),
        )
    finally:
        torch.set_num_threads(threads)
    if distributed and torch.distributed.get_rank() == 0:
        torch.distributed.barrier()
    return path


def build_policy(cfg: TrainConfig, device: torch.device):
    """(model, tokenizer): the tiny model's cold start, or a pretrained model from a local path/HF cache."""
    path = str(cold_start_dir(cfg)) if cfg.model.name == "tiny" else _pretrained_path(cfg.model)
    model = load_model(path, dtype=torch.float32, attn_implementation=cfg.model.attn_implementation)
    if cfg.model.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device), load_tokenizer(path)


def _pretrained_path(model: ModelConfig) -> str:
    if not model.path:
        raise ValueError(
            "model.path is required with model.name=pretrained (a local directory or HF cache id)"
        )
    return model.path


def build_rollout(cfg: TrainConfig, model: torch.nn.Module, tokenizer):
    """The rollout backend: our decode loop on the policy itself (hf) or a colocated vLLM engine that
    starts from the policy's checkpoint and then follows the trainer through sync_weights."""
    if cfg.rollout.backend == "hf":
        return HFRolloutBackend(model, tokenizer, max_batch_size=cfg.rollout.generation_batch_size)
    from lrm_fast.rollout.vllm import VLLMRolloutBackend

    path = str(cold_start_dir(cfg)) if cfg.model.name == "tiny" else _pretrained_path(cfg.model)
    return VLLMRolloutBackend(path, tokenizer, cfg.rollout, seed=cfg.seed)


def build_examples(data: DataConfig, num_heldout: int) -> tuple[list[PromptExample], list[PromptExample]]:
    """(train, held-out) prompts: the built-in task's splits or the configured files."""
    if data.name == "arithmetic":
        settings = task_settings(data)
        train = generate_problems(data.train_problems, split="train", seed=data.seed, settings=settings)
        heldout = generate_problems(num_heldout, split="held_out", seed=data.seed + 1, settings=settings)
        # The offline solution bank of injection=osi: up to 4 valid step orders per problem.
        as_example = lambda p: PromptExample(
            id=p.id, problem=p.problem, answer=p.answer, solutions=tuple(solutions(p, 4))
        )
        return [as_example(p) for p in train], [as_example(p) for p in heldout]
    columns = Columns(problem=data.problem_key, answer=data.answer_key)
    train = load_prompts(data.train_path, columns)
    heldout = load_prompts(data.heldout_path, columns)[:num_heldout] if data.heldout_path else []
    return train, heldout


def prompt_template(data: DataConfig) -> str:
    # The built-in task's character vocabulary holds only the expression; real data gets the study's suffix.
    return "{problem}" if data.name == "arithmetic" else "{problem}" + data.prompt_suffix


def encode(examples: list[PromptExample], tokenizer, data: DataConfig) -> list[list[int]]:
    return encode_prompts(examples, tokenizer, prompt_template(data)) if examples else []


def build_optimizer(model: torch.nn.Module, trainer: TrainerConfig):
    """AdamW with linear warmup, then a constant or cosine learning rate (the study: constant)."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=trainer.lr, betas=tuple(trainer.betas), weight_decay=trainer.weight_decay
    )

    def multiplier(step: int) -> float:
        if step < trainer.warmup_steps:
            return (step + 1) / trainer.warmup_steps
        if trainer.lr_schedule == "cosine":
            progress = (step - trainer.warmup_steps) / max(trainer.steps - trainer.warmup_steps, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
