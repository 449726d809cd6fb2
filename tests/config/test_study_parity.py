"""The study's runs as its scripts ran them: each `+experiment` composed and compared, key by key, with the
record of its script's settings (docs/parity/study_scripts.yaml). Every script setting either maps to an
lrm_fast key, whose composed value must equal the one the script implies, or is named below as not an
algorithm setting (hardware, memory, logging), with the reason. A difference is allowed only where
DEVIATIONS lists it with its reason; a listed deviation that no longer differs fails too, so the list
stays true. docs/PARITY.md is the side-by-side table."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lrm_fast.cli.configs import register_configs
from lrm_fast.config import TrainConfig
from lrm_fast.config.datasets import catalogue

ROOT = Path(__file__).resolve().parents[2]
RECORD = yaml.safe_load((ROOT / "docs" / "parity" / "study_scripts.yaml").read_text())
SCRIPTS = sorted(RECORD["scripts"])

# The study's model names, as the scripts' MODEL_PATH defaults give them, and the hub ids they are.
MODELS = {
    "DeepSeek-R1-Distill-Qwen-1.5B": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "DeepScaleR-1.5B-Preview": "agentica-org/DeepScaleR-1.5B-Preview",
}


def _model_path(s: dict) -> str | None:
    # A continuation starts from the previous stage's export: given at launch (model.path=RUN/final_model).
    return MODELS.get(s["model"])


def _catalogue_entry_of(file: str) -> str | None:
    """catalogue:NAME of the study's file at the pinned commit (None: the file is not in the catalogue)."""
    for name, entry in catalogue().items():
        if entry.path.endswith("/" + file):
            return f"catalogue:{name}"
    return None


def _regime(s: dict) -> str:
    if s["algorithm.cut_down_positive_samples"]:
        return "negative"
    return "positive" if s["algorithm.cut_down_negative_samples"] else "full"


def _pruning(s: dict) -> bool:
    return s["algorithm.cut_down_positive_samples"] or s["algorithm.cut_down_negative_samples"]


@dataclass(frozen=True)
class Rule:
    """An lrm_fast key and the value a script's settings imply for it; `applies` says when it matters
    (the RLR constants only with RLR on, ...)."""

    key: str
    value: Any  # a function of the script's settings
    sources: tuple[str, ...]  # the script settings it reads
    applies: Any = None  # a function of the settings; None: always


RULES = [
    Rule("model.path", _model_path, ("model",)),
    Rule("data.train_path", lambda s: _catalogue_entry_of(s["data.train_files"]), ("data.train_files",)),
    Rule("data.heldout_path", lambda s: _catalogue_entry_of(s["data.val_files"]), ("data.val_files",)),
    Rule("trainer.prompts_per_step", lambda s: s["data.train_batch_size"], ("data.train_batch_size",)),
    Rule("rollout.max_new_tokens", lambda s: s["data.max_response_length"], ("data.max_response_length",)),
    Rule("rollout.group_size", lambda s: s["actor_rollout_ref.rollout.n"], ("actor_rollout_ref.rollout.n",)),
    Rule(
        "rollout.temperature",
        lambda s: s["actor_rollout_ref.rollout.temperature"],
        ("actor_rollout_ref.rollout.temperature",),
    ),
    Rule(
        "rollout.top_p", lambda s: s["actor_rollout_ref.rollout.top_p"], ("actor_rollout_ref.rollout.top_p",)
    ),
    Rule(
        "eval.temperature",
        lambda s: s["actor_rollout_ref.rollout.val_temperature"],
        ("actor_rollout_ref.rollout.val_temperature",),
    ),
    Rule(
        "eval.samples_per_problem",
        lambda s: s["actor_rollout_ref.rollout.n_val"],
        ("actor_rollout_ref.rollout.n_val",),
    ),
    Rule("eval.every", lambda s: s["trainer.test_freq"], ("trainer.test_freq",)),
    Rule("trainer.checkpoint_every", lambda s: s["trainer.save_freq"], ("trainer.save_freq",)),
    Rule(
        "trainer.lr", lambda s: s["actor_rollout_ref.actor.optim.lr"], ("actor_rollout_ref.actor.optim.lr",)
    ),
    Rule(
        "trainer.lr_schedule",
        lambda s: s["actor_rollout_ref.actor.optim.warmup_style"],
        ("actor_rollout_ref.actor.optim.warmup_style",),
    ),
    Rule(
        "trainer.warmup_steps",
        lambda s: 0 if s["actor_rollout_ref.actor.optim.lr_warmup_steps_ratio"] == 0 else None,
        ("actor_rollout_ref.actor.optim.lr_warmup_steps_ratio",),
    ),
    Rule(
        "trainer.weight_decay",
        lambda s: s["actor_rollout_ref.actor.optim.weight_decay"],
        ("actor_rollout_ref.actor.optim.weight_decay",),
    ),
    Rule(
        "trainer.betas",
        lambda s: tuple(s["actor_rollout_ref.actor.optim.betas"]),
        ("actor_rollout_ref.actor.optim.betas",),
    ),
    Rule(
        "trainer.grad_clip",
        lambda s: s["actor_rollout_ref.actor.grad_clip"],
        ("actor_rollout_ref.actor.grad_clip",),
    ),
    # GRPO: the group's rewards normalised by their mean and unbiased std (PAPER.md §1).
    Rule(
        "loss.advantage_scale",
        lambda s: "std" if s["algorithm.adv_estimator"] == "grpo" else None,
        ("algorithm.adv_estimator",),
    ),
    Rule(
        "loss.kl_coef",
        lambda s: (
            s["actor_rollout_ref.actor.kl_loss_coef"] if s["actor_rollout_ref.actor.use_kl_loss"] else 0.0
        ),
        ("actor_rollout_ref.actor.use_kl_loss", "actor_rollout_ref.actor.kl_loss_coef"),
    ),
    # With its KL loss off, the study's trainer subtracts kl_ctrl.kl_coef x the summed k1 log-ratio from
    # each reward (ray_trainer.py fit: apply_kl_penalty unless use_kl_loss); k1 is its kl_penalty "kl".
    Rule(
        "reward.kl_coef",
        lambda s: 0.0 if s["actor_rollout_ref.actor.use_kl_loss"] else s["algorithm.kl_ctrl.kl_coef"],
        ("actor_rollout_ref.actor.use_kl_loss", "algorithm.kl_ctrl.kl_coef"),
    ),
    Rule(
        "loss.entropy_coef",
        lambda s: s["actor_rollout_ref.actor.entropy_coeff"],
        ("actor_rollout_ref.actor.entropy_coeff",),
    ),
    Rule(
        "loss.clip_low",
        lambda s: s["actor_rollout_ref.actor.clip_ratio"],
        ("actor_rollout_ref.actor.clip_ratio",),
    ),
    Rule(
        "loss.clip_high",
        lambda s: s["actor_rollout_ref.actor.clip_ratio"],
        ("actor_rollout_ref.actor.clip_ratio",),
    ),
    Rule(
        "regime.name", _regime, ("algorithm.cut_down_positive_samples", "algorithm.cut_down_negative_samples")
    ),
    Rule(
        "reward.name",
        lambda s: "rlr" if s["algorithm.enble_relative_length_reward"] else "binary",
        ("algorithm.enble_relative_length_reward",),
    ),
    Rule(
        "reward.tau",
        lambda s: s["algorithm.rlr_args_corr_ratio"],
        ("algorithm.rlr_args_corr_ratio",),
        lambda s: s["algorithm.enble_relative_length_reward"],
    ),
    Rule(
        "reward.hi",
        lambda s: s["algorithm.rlr_args_upper_bound"],
        ("algorithm.rlr_args_upper_bound",),
        lambda s: s["algorithm.enble_relative_length_reward"],
    ),
    Rule(
        "reward.lo",
        lambda s: s["algorithm.rlr_args_lower_bound"],
        ("algorithm.rlr_args_lower_bound",),
        lambda s: s["algorithm.enble_relative_length_reward"],
    ),
    Rule(
        "reward.b",
        lambda s: s["algorithm.rlr_args_length_base"],
        ("algorithm.rlr_args_length_base",),
        lambda s: s["algorithm.enble_relative_length_reward"],
    ),
    Rule(
        "injection.name",
        lambda s: "osi" if s["algorithm.enable_offline_samples"] else "none",
        ("algorithm.enable_offline_samples",),
    ),
    Rule(
        "injection.alpha",
        lambda s: s["algorithm.offline_samples_alpha"],
        ("algorithm.offline_samples_alpha",),
        lambda s: s["algorithm.enable_offline_samples"],
    ),
    Rule(
        "injection.cap",
        lambda s: None if s["algorithm.max_inject_num"] <= 0 else s["algorithm.max_inject_num"],
        ("algorithm.max_inject_num",),
        lambda s: s["algorithm.enable_offline_samples"],
    ),
    Rule(
        "injection.clip_policy_tokens",
        lambda s: not s["actor_rollout_ref.actor.algorithm.enable_luffy_loss"],
        ("actor_rollout_ref.actor.algorithm.enable_luffy_loss",),
        lambda s: s["algorithm.enable_offline_samples"],
    ),
    Rule(
        "reward.repetition_penalty",
        lambda s: (
            float(s["algorithm.rr_args_max_penalty"]) if s["algorithm.enble_repetition_reward"] else 0.0
        ),
        ("algorithm.enble_repetition_reward", "algorithm.rr_args_max_penalty"),
    ),
    Rule(
        "reward.repetition_ngram",
        lambda s: s["algorithm.rr_args_ngram_size"],
        ("algorithm.rr_args_ngram_size",),
        lambda s: s["algorithm.enble_repetition_reward"],
    ),
    Rule(
        "reward.truncated",
        lambda s: "mask" if s["algorithm.mask_truncated_samples"] else "keep",
        ("algorithm.mask_truncated_samples",),
    ),
    Rule(
        "regime.reserve_ratio",
        lambda s: s["algorithm.cut_down_samples_reserve_ratio"],
        ("algorithm.cut_down_samples_reserve_ratio",),
        _pruning,
    ),
    Rule(
        "regime.reserve_min",
        lambda s: s["algorithm.cut_down_samples_reserve_min_num"],
        ("algorithm.cut_down_samples_reserve_min_num",),
        _pruning,
    ),
    # Every script cuts its batch with use_dynamic_bsz: verl weights each micro-batch's token mean (or, with
    # loss_remove_token_mean, token sum) by its share of the mini-batch's sequences (dp_actor.py:351-353).
    Rule(
        "loss.aggregation",
        lambda s: (
            "micro_batch_token_sum"
            if s["actor_rollout_ref.actor.loss_remove_token_mean"]
            else "micro_batch_token_mean"
        ),
        ("actor_rollout_ref.actor.loss_remove_token_mean",),
    ),
    Rule(
        "trainer.mini_batches",
        lambda s: s["data.train_batch_size"] // s["actor_rollout_ref.actor.ppo_mini_batch_size"],
        ("actor_rollout_ref.actor.ppo_mini_batch_size",),
    ),
    Rule(
        "trainer.epochs",
        lambda s: s["actor_rollout_ref.actor.ppo_epochs"],
        ("actor_rollout_ref.actor.ppo_epochs",),
    ),
    Rule(
        "injection.shaping",
        lambda s: s["actor_rollout_ref.actor.algorithm.enable_luffy_loss"],
        ("actor_rollout_ref.actor.algorithm.enable_luffy_loss",),
        lambda s: s["algorithm.enable_offline_samples"],
    ),
]

# Script settings that are not algorithm settings: where and how fast the same computation runs.
NOT_ALGORITHM = {
    "data.val_batch_size": "vLLM's validation batch: all prompts at once either way",
    "data.max_prompt_length": "a check: a longer prompt stops verl (truncation: error); lrm_fast keeps it",
    "actor_rollout_ref.model.use_remove_padding": "padding-free micro-batches: loss.packing, the same loss",
    "actor_rollout_ref.actor.use_dynamic_bsz": "token-budget micro-batches, as loss.micro_batch_tokens",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": (
        "the micro-batch token budget (memory; with the micro_batch_* aggregations also the split they "
        "weight by), loss.micro_batch_tokens, which is per rank as here"
    ),
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size": "sequence parallelism off (1)",
    "actor_rollout_ref.model.enable_gradient_checkpointing": "memory: model.activation_checkpointing",
    "actor_rollout_ref.actor.fsdp_config.param_offload": "memory placement",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload": "memory placement",
    "actor_rollout_ref.ref.fsdp_config.param_offload": "memory placement",
    "actor_rollout_ref.rollout.tensor_model_parallel_size": "vLLM parallelism",
    "actor_rollout_ref.rollout.name": "the sampler: rollout=vllm on GPUs (the default hf on CPU)",
    "actor_rollout_ref.rollout.gpu_memory_utilization": "vLLM memory (rollout.gpu_memory_utilization)",
    "actor_rollout_ref.rollout.max_num_batched_tokens": "vLLM scheduling",
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl is the k3 estimator, the only one lrm_fast has",
    "trainer.critic_warmup": "no critic in GRPO",
    "trainer.logger": "logging",
    "trainer.project_name": "logging",
    "trainer.val_before_train": "lrm-fast-train always evaluates before training",
    "trainer.n_gpus_per_node": "hardware (torchrun --nproc-per-node)",
    "trainer.nnodes": "hardware",
    "trainer.default_hdfs_dir": "storage",
}

# Algorithm settings lrm_fast does not have, with what they do in the study's runs.
UNMODELLED = {
    "algorithm.kl_penalty": "the estimator of the reward KL: k1 (kl), the only one reward.kl_coef uses",
    "trainer.total_epochs": (
        "30 epochs bound the scripts' runs, which were stopped at checkpoints the study does not list; "
        "lrm_fast runs trainer.steps (500 in the experiments: set it to the run length you need)"
    ),
}

# Where an experiment differs from its script on purpose: (script, key) -> reason.
DEVIATIONS: dict[tuple[str, str], str] = {
    ("RLR_8k", "data.heldout_path"): (
        "the script validates on data/train/dev.parquet, which is not in the study's repository; "
        "rlr_8k validates on AIME24 (catalogue:aime24_val) like every other run"
    ),
}


def _settings(script: str) -> dict:
    """The script's settings over the shared ones over verl's defaults."""
    return {**RECORD["verl_defaults"], **RECORD["common"], **RECORD["scripts"][script]["settings"]}


def _compose(experiment: str) -> TrainConfig:
    register_configs()
    with initialize_config_module(config_module="lrm_fast.conf", version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=[f"+experiment={experiment}"]))


def _value(cfg: TrainConfig, key: str):
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    if isinstance(value, list):  # a tuple in the schema, a list once composed
        return tuple(value)
    return value.value if hasattr(value, "value") else value  # a choice enum as its string


@pytest.mark.parametrize("script", SCRIPTS)
def test_experiment_matches_its_script_key_by_key(script):
    settings = _settings(script)
    cfg = _compose(RECORD["scripts"][script]["experiment"])
    differences = {}
    for rule in RULES:
        if rule.applies is not None and not rule.applies(settings):
            continue
        expected, ours = rule.value(settings), _value(cfg, rule.key)
        if ours != expected:
            differences[rule.key] = (ours, expected)
    unexplained = {k: v for k, v in differences.items() if (script, k) not in DEVIATIONS}
    assert not unexplained, f"{script}: lrm_fast value vs the script's: {unexplained}"
    stale = [key for (s, key) in DEVIATIONS if s == script and key not in differences]
    assert not stale, f"{script}: listed as deviations but equal to the script: {stale}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_setting_is_mapped_or_named(script):
    mapped = {source for rule in RULES for source in rule.sources}
    unaccounted = sorted(set(_settings(script)) - mapped - set(NOT_ALGORITHM) - set(UNMODELLED))
    assert not unaccounted, f"{script}: settings neither mapped to a key nor named: {unaccounted}"
