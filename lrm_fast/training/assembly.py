"""Building the parts a run needs from its typed config: policy, tokenizer, rollout backend, optimizer."""

from dataclasses import dataclass

import torch

from lrm_fast.config import ModelConfig, TrainConfig, TrainerConfig
from lrm_fast.config.choices import DataSource, Injection, ModelSource, RolloutEngine
from lrm_fast.config.validation import round_prompts
from lrm_fast.data.examples import PromptExample
from lrm_fast.data.prompts import encode_prompts, prompt_template
from lrm_fast.data.sources import builtin_task, load_examples
from lrm_fast.data.tokenizer import load_tokenizer
from lrm_fast.levers.injection import load_solution_bank
from lrm_fast.levers.scoring import ScoredStep, score_rollouts
from lrm_fast.model.causal_lm import enable_activation_checkpointing, load_model
from lrm_fast.model.cold_start import cached_cold_start
from lrm_fast.model.optim import adamw
from lrm_fast.rollout.hf import HFRolloutBackend
from lrm_fast.runtime import DEFAULT_THREADS


@dataclass(frozen=True)
class RunData:
    """A run's prompts, read and checked before any model is built (a bad file costs no model load)."""

    train: list[PromptExample]
    heldout: list[PromptExample]
    solutions_by_id: dict[str, tuple[str, ...]] | None  # injection.bank_path's bank; None: the examples'


def load_run_data(cfg: TrainConfig, world_size: int) -> RunData:
    """The training and held-out prompts and the solution bank, with their sizes checked against the
    batch: every error names the key and the file."""
    train, heldout = load_examples(cfg.data, cfg.eval.problems)
    batch = cfg.trainer.prompts_per_step
    if batch % world_size:
        raise ValueError(
            f"trainer.prompts_per_step={batch} must be a multiple of the world size {world_size}"
        )
    file = cfg.data.name == DataSource.file
    source = f"data.train_path={cfg.data.train_path}" if file else "the built-in task (data.train_problems)"
    if batch > len(train):
        raise ValueError(
            f"trainer.prompts_per_step={batch} is more than the {len(train)} prompts of {source}"
        )
    per_round = round_prompts(cfg)  # dynamic sampling's rounds draw ceil(oversample * B) prompts
    if per_round > len(train):
        raise ValueError(
            f"sampling.oversample={cfg.sampling.oversample} draws {per_round} prompts per round, more than "
            f"the {len(train)} prompts of {source}"
        )
    bank_path = cfg.injection.bank_path if cfg.injection.name == Injection.osi else None
    return RunData(train, heldout, load_solution_bank(bank_path) if bank_path else None)


def cold_start_dir(cfg: TrainConfig) -> str:
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
        path = cached_cold_start(builtin_task(cfg.data), cfg.cold_start, cfg.model.tiny)
    finally:
        torch.set_num_threads(threads)
    if distributed and torch.distributed.get_rank() == 0:
        torch.distributed.barrier()
    return str(path)


def policy_path(cfg: TrainConfig) -> str:
    """Where the policy's starting weights are: the tiny model's cold start, or model.path."""
    return cold_start_dir(cfg) if cfg.model.name == ModelSource.tiny else _pretrained_path(cfg.model)


def build_policy(cfg: TrainConfig, device: torch.device):
    """(model, tokenizer): the tiny model's cold start, or a pretrained model from a local path/HF cache."""
    path = policy_path(cfg)
    model = load_model(path, dtype=torch.float32, attn_implementation=cfg.model.attn_implementation.value)
    if cfg.model.activation_checkpointing:
        enable_activation_checkpointing(model)
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
    if cfg.rollout.backend == RolloutEngine.hf:
        return HFRolloutBackend(model, tokenizer, max_batch_size=cfg.rollout.generation_batch_size)
    from lrm_fast.rollout.vllm import VLLMRolloutBackend

    return VLLMRolloutBackend(policy_path(cfg), tokenizer, cfg.rollout, seed=cfg.seed)


def score(
    cfg: TrainConfig, examples: list[PromptExample], rollouts, tokenizer, bank, log_ratios=None
) -> ScoredStep:
    """One round's rollouts graded, rewarded and given advantages with the run's settings (`log_ratios`:
    each response's summed log-ratio to the reference, for reward.kl_coef)."""
    return score_rollouts(
        examples,
        rollouts,
        cfg.rollout.group_size,
        tokenizer,
        cfg.reward,
        cfg.injection,
        bank,
        cfg.loss.advantage_scale,
        cfg.rollout.max_new_tokens,
        log_ratios,
        cfg.loss.advantage_estimator,
    )


def encode(examples: list[PromptExample], tokenizer, cfg: TrainConfig) -> list[list[int]]:
    """Prompt token ids of `examples` with the run's template."""
    return encode_prompts(examples, tokenizer, prompt_template(cfg.data)) if examples else []


def build_optimizer(model: torch.nn.Module, trainer: TrainerConfig):
    """AdamW with linear warmup, then a constant or cosine learning rate (the study: constant)."""
    return adamw(
        model.parameters(),
        lr=trainer.lr,
        betas=tuple(trainer.betas),
        weight_decay=trainer.weight_decay,
        warmup_steps=trainer.warmup_steps,
        steps=trainer.steps,
        schedule=trainer.lr_schedule,
    )
