"""Typed configuration: one dataclass per concern, registered once in Hydra's ConfigStore.

The YAML files in conf/ only choose between real alternatives and set values; these schemas define every
key, its type and its default, so an unknown key or a wrong type fails at composition, before any work.
Defaults are the embedded CPU task's; conf/experiment/ files carry the study's settings (PAPER.md).
"""

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class TinyModelConfig:
    """Shape of the built-in tiny Qwen2 model (DESIGN.md calibration: 0.79M parameters)."""

    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4  # head_dim = hidden_size / num_heads >= 32 (vLLM's CPU attention needs it)
    intermediate_size: int = 512
    max_position_embeddings: int = 256


@dataclass
class ModelConfig:
    """The policy (and, with a KL term, the frozen reference: a copy of the starting weights)."""

    name: str = "tiny"  # "tiny": built-in model + cached SFT cold start; "pretrained": load `path`
    path: str | None = None  # local directory or HF cache id (never downloaded) for name=pretrained
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    attn_implementation: str = "sdpa"  # "sdpa" or "flash_attention_2" (GPU, flash-attn installed)
    activation_checkpointing: bool = False  # recompute block activations in backward (long responses)


@dataclass
class ColdStartConfig:
    """SFT cold start of the tiny model: the stand-in for the study's R1-distilled starting point."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    schedule: str = "constant"  # after warmup: "constant" or "cosine"
    length_group: int = 8  # batches drawn from windows of this many length-sorted batches (less padding)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_problems: int = 20_000  # distinct training problems the SFT batches come from
    seed: int = 0
    # The teacher stands in for the study's R1-distilled start: it slips (a share of its solutions has one
    # wrong step, so the cold start makes errors RL can remove) and checks steps (correct responses of
    # varied length, for the relative length reward). See lrm_fast/tasks/arithmetic.py.
    slip_prob: float = 0.4
    check_prob: float = 0.2
    space_prob: float = 0.5  # chance of a space after <think> and each comma (length nothing depends on)
    cache_dir: str = "${oc.env:LRM_FAST_CACHE,'~/.cache/lrm_fast'}/cold_start"  # reused when settings match


@dataclass
class DifficultyConfig:
    """Built-in arithmetic task: operands per problem and digits per operand."""

    min_operands: int = 2
    max_operands: int = 4
    min_digits: int = 1
    max_digits: int = 1  # 1-digit operands; values still reach the hundreds (9*9*9 = 729)
    operators: str = "+-*"
    parentheses_prob: float = 0.0
    held_out_fraction: float = 0.1  # share of all problem texts (by hash) in the held-out split


@dataclass
class DataConfig:
    """Prompts: the built-in task (name=arithmetic) or local files (name=file)."""

    name: str = "arithmetic"
    seed: int = 0  # generator seed of the built-in task (splits are disjoint by construction)
    train_problems: int = 20_000  # size of the built-in task's GRPO prompt pool
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    train_path: str | None = None  # jsonl or parquet with `problem_key` and `answer_key` columns
    heldout_path: str | None = None
    problem_key: str = "problem"
    answer_key: str = "answer"
    # The study's (DeepScaleR's) instruction, appended to every problem of a real dataset.
    prompt_suffix: str = " Let's think step by step and output the final answer within \\boxed{}."


@dataclass
class RolloutConfig:
    """Sampling of G responses per prompt."""

    backend: str = "hf"  # "hf": our decode loop on the training model (CPU default); "vllm": colocated engine
    group_size: int = 8  # G
    temperature: float = 1.0  # study: 0.6 for R1-distilled models
    top_p: float = 1.0
    max_new_tokens: int = 64  # study: 8k / 16k / 24k; the tiny task's reference answers take <= 57
    generation_batch_size: int = 256  # sequences per generate() call (hf)
    # Sampler / trainer mismatch: every step logs mean |logp_trainer - logp_sampler| and the mean token
    # probability ratio (rollout/logp_abs_diff, rollout/prob_ratio) from one extra no-grad pass over the
    # logits; with tis_cap, each token's loss is weighted by min(p_trainer / p_sampler, tis_cap)
    # (truncated importance sampling: vLLM's numerics differ from the trainer's). None: off.
    log_mismatch: bool = False
    tis_cap: float | None = None
    # rollout=vllm only (lrm_fast/rollout/vllm.py).
    gpu_memory_utilization: float = 0.5  # the engine's share of the GPU (weights + KV cache)
    tensor_parallel_size: int = 1  # ranks one engine spans; must divide the world size
    sleep: bool = False  # free the engine's KV cache and offload its weights during the update (CUDA)
    max_model_len: int | None = None  # longest prompt + response the engine accepts; None: the model's
    dtype: str = "auto"  # engine weights: "auto" is bf16 on GPU, fp32 on CPU
    sync_bucket_mb: int = 512  # gathered parameters held at once while pushing weights to the engine
    cpu_kv_cache_gb: int = 1  # KV cache of the CPU build (VLLM_CPU_KVCACHE_SPACE); unused on GPU
    enforce_eager: bool = False  # no CUDA graphs / torch.compile: faster start, slower decode


@dataclass
class LossConfig:
    """The clipped GRPO loss (lrm_fast.kernels.grpo_loss) and how token losses are aggregated."""

    # token_mean (DAPO), seq_mean_token_mean (original GRPO) or seq_mean_token_sum_norm (Dr. GRPO).
    # Every normaliser is global: computed over the whole batch before the micro-batch loop.
    aggregation: str = "token_mean"
    sum_norm_length: int | None = None  # Dr. GRPO's constant; None: rollout.max_new_tokens
    advantage_scale: str = "std"  # "std" (GRPO) or "none" (Dr. GRPO)
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0  # study: 0.001 (k3 estimator); > 0 keeps a frozen reference model
    entropy_coef: float = 0.0  # study's scripts: 0.001
    backend: str = "auto"  # "auto" (triton on CUDA, torch otherwise), "triton" or "torch"
    # Loss from the final hidden states and the LM head's weight (kernels.grpo_loss_from_hidden), in chunks
    # of tokens: the [N, V] logits and their gradient never exist. Same loss and gradients; pays off when
    # N * V dominates memory (long responses, 128k-152k vocabularies), not at the tiny default.
    fused_head: bool = False
    micro_batch_tokens: int = 8192  # token budget (prompt + response) of one forward/backward
    # Packed micro-batches (lrm_fast/packing.py): the sequences end to end in one row, no padding, so the
    # budget counts real tokens. Pays off when lengths vary a lot (long reasoning traces).
    packing: bool = False
    # Attention within the packed sequences: "sdpa" (block-diagonal mask; anywhere), "varlen" (torch's
    # varlen kernel; CUDA), "flash" (flash-attn; CUDA) or "auto" (flash, else varlen on CUDA; sdpa on CPU).
    packed_attention: str = "auto"


@dataclass
class RegimeConfig:
    """Which responses enter the update, and with what weight (PAPER.md §2; lrm_fast/regimes.py)."""

    # full | positive | negative | neg_to_pos (negative first, then `second_phase`) | weighted
    name: str = "full"
    # "correctness" (the study's code) or "advantage" (sign of A; differs only in zero-variance groups)
    select_by: str = "correctness"
    # False (the study): weights keep the full batch's normalisers, so a pruned step is smaller.
    # True: normalisers count only the responses the regime keeps.
    renormalise: bool = False
    positive_weight: float = 1.0  # regime=weighted: scale of positive responses (W-REINFORCE: 0.1)
    negative_weight: float = 1.0  # regime=weighted: scale of negative responses
    switch_step: int | None = None  # neg_to_pos: steps 1..switch_step are negative-only
    switch_accuracy: float | None = None  # neg_to_pos: switch after a held-out eval reaches it
    second_phase: str = "full"  # neg_to_pos: "full" or "positive" after the switch
    # Zero-variance groups have A = 0 and no policy gradient: skip their forward pass. Their tokens
    # still count in the normalisers, so dropping them changes nothing but their KL / entropy terms.
    drop_zero_variance: bool = True


@dataclass
class RewardConfig:
    """Reward of a response (PAPER.md §1, §4; lrm_fast/rewards.py)."""

    name: str = "binary"  # binary: 1 if the last \\boxed{} answer is correct, else 0 | rlr
    # rlr: groups with accuracy >= tau shape each correct response by 1 + clip((mean_len - len) / b, lo, hi)
    tau: float = 0.75
    b: float = 500.0  # tokens
    lo: float = -0.5
    hi: float = 1.0


@dataclass
class InjectionConfig:
    """Offline sample injection into too-hard groups (PAPER.md §5; lrm_fast/injection.py)."""

    name: str = "none"  # none | osi
    alpha: float = 0.125  # groups with accuracy <= alpha receive stored correct solutions
    cap: int = 1  # at most this many responses replaced per group
    # Solution bank: null reads the dataset's `solutions` column (the built-in task has one);
    # a path reads a jsonl of {"id": ..., "solutions": [...]} keyed by problem id.
    bank_path: str | None = None
    # LUFFY-style shaping of injected tokens: loss -A * p / (p + gamma), unclipped (their released run)
    shaping: bool = False
    gamma: float = 0.1


@dataclass
class EvalConfig:
    """Held-out evaluation before training, every `every` steps and at the end (lrm_fast/multi_round.py;
    `lrm-fast-eval model.path=RUN/final_model` evaluates the result with more samples and rounds)."""

    problems: int = 1000  # DESIGN.md: 500 problems give about +/-3 points
    samples_per_problem: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    greedy: bool = False  # also one greedy response per problem (greedy accuracy and flips in the JSON)
    max_rounds: int = 1  # adaptive rounds after the first (PAPER.md §6)
    every: int = 0  # steps between evaluations (0: only before and after training)


@dataclass
class TrainerConfig:
    """Optimisation, checkpoints and logging."""

    steps: int = 200
    prompts_per_step: int = 32  # B; B * G responses per step
    lr: float = 1e-4  # study: 1e-6 (1.5B model); the tiny model needs far more
    lr_schedule: str = "constant"  # "constant" or "cosine", after linear warmup
    warmup_steps: int = 20
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # a step whose gradient norm is not finite is skipped
    checkpoint_every: int = 50  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 2
    resume: str | None = None  # run directory of a killed run to continue
    mixed_precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "bf16" or "fp32"
    num_threads: int = 0  # torch intra-op threads on CPU (0: torch's default; the tiny model runs best on 1)
    progress_bar: bool = True


@dataclass
class TrainConfig:
    """Everything `lrm-fast-train` needs; composed from conf/config.yaml and the command line."""

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_configs() -> None:
    """Register the schemas; conf/config.yaml starts its defaults list with `base_config`."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=TrainConfig)


def _choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")


def _positive(name: str, value) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _at_least(name: str, value, bound, why: str = "") -> None:
    if not value >= bound:
        raise ValueError(f"{name} must be >= {bound}{why}, got {value!r}")


def _probability(name: str, value) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Checks beyond types, run before any work: choices, ranges, files that must exist."""
    _validate_inputs(cfg)
    _choice("rollout.backend", cfg.rollout.backend, ("hf", "vllm"))
    if cfg.rollout.tis_cap is not None and not cfg.rollout.tis_cap >= 1:
        raise ValueError(f"rollout.tis_cap must be >= 1 (or null: off), got {cfg.rollout.tis_cap}")
    if not 0 < cfg.rollout.gpu_memory_utilization < 1:
        raise ValueError(
            f"rollout.gpu_memory_utilization must be in (0, 1), got {cfg.rollout.gpu_memory_utilization}"
        )
    _positive("rollout.tensor_parallel_size", cfg.rollout.tensor_parallel_size)
    _positive("rollout.sync_bucket_mb", cfg.rollout.sync_bucket_mb)
    _choice(
        "loss.aggregation",
        cfg.loss.aggregation,
        ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"),
    )
    _choice("loss.advantage_scale", cfg.loss.advantage_scale, ("std", "none"))
    _choice("loss.backend", cfg.loss.backend, ("auto", "triton", "torch"))
    _choice("loss.packed_attention", cfg.loss.packed_attention, ("auto", "sdpa", "varlen", "flash"))
    _validate_levers(cfg)
    _validate_ranges(cfg)
    _choice("trainer.lr_schedule", cfg.trainer.lr_schedule, ("constant", "cosine"))
    _choice("trainer.mixed_precision", cfg.trainer.mixed_precision, ("auto", "bf16", "fp32"))
    for name, value in [
        ("rollout.temperature", cfg.rollout.temperature),
        ("rollout.max_new_tokens", cfg.rollout.max_new_tokens),
        ("loss.micro_batch_tokens", cfg.loss.micro_batch_tokens),
        ("trainer.steps", cfg.trainer.steps),
        ("trainer.prompts_per_step", cfg.trainer.prompts_per_step),
        ("trainer.lr", cfg.trainer.lr),
        ("trainer.checkpoint_every", cfg.trainer.checkpoint_every),
        ("eval.samples_per_problem", cfg.eval.samples_per_problem),
        ("eval.max_rounds", cfg.eval.max_rounds),
    ]:
        _positive(name, value)
    if not 0 < cfg.rollout.top_p <= 1:
        raise ValueError(f"rollout.top_p must be in (0, 1], got {cfg.rollout.top_p}")


def _validate_inputs(cfg: TrainConfig) -> None:
    """The model, data and run directory the job reads: named where they must be, present on disk."""
    from pathlib import Path

    _choice("model.name", cfg.model.name, ("tiny", "pretrained"))
    if cfg.model.name == "pretrained" and not cfg.model.path:
        raise ValueError("model.path is required with model=pretrained (a local directory or HF cache id)")
    _choice("data.name", cfg.data.name, ("arithmetic", "file"))
    if cfg.data.name == "file":
        if not cfg.data.train_path:
            raise ValueError("data.train_path is required with data=file")
        for key in ("train_path", "heldout_path"):
            path = getattr(cfg.data, key)
            if path and not Path(path).expanduser().is_file():
                raise FileNotFoundError(f"data.{key}: no such file: {path}")
    if cfg.trainer.resume and not Path(cfg.trainer.resume).expanduser().is_dir():
        raise FileNotFoundError(f"trainer.resume: no such run directory: {cfg.trainer.resume}")


def _validate_ranges(cfg: TrainConfig) -> None:
    """Numeric settings whose meaningful range is narrower than their type."""
    rollout, loss, trainer, ev, sft = cfg.rollout, cfg.loss, cfg.trainer, cfg.eval, cfg.cold_start
    # A group of one response has advantage 0 (its own mean), so a run with G = 1 would train nothing.
    _at_least("rollout.group_size", rollout.group_size, 2, " (group-relative advantages need a group)")
    _positive("rollout.generation_batch_size", rollout.generation_batch_size)
    if not 0 <= loss.clip_low < 1:  # the ratio's lower bound 1 - clip_low must stay positive
        raise ValueError(f"loss.clip_low must be in [0, 1), got {loss.clip_low!r}")
    _at_least("loss.clip_high", loss.clip_high, 0)
    if loss.dual_clip is not None and not loss.dual_clip > 1:
        raise ValueError(f"loss.dual_clip must be > 1 (or null: off), got {loss.dual_clip!r}")
    if loss.sum_norm_length is not None:
        _positive("loss.sum_norm_length", loss.sum_norm_length)
    _at_least("loss.kl_coef", loss.kl_coef, 0)
    _at_least("loss.entropy_coef", loss.entropy_coef, 0)
    _positive("trainer.grad_clip", trainer.grad_clip)
    _at_least("trainer.warmup_steps", trainer.warmup_steps, 0)
    _at_least("trainer.weight_decay", trainer.weight_decay, 0)
    _at_least("trainer.keep_checkpoints", trainer.keep_checkpoints, 1)
    _positive("data.train_problems", cfg.data.train_problems)
    _positive("eval.problems", ev.problems)
    _positive("eval.temperature", ev.temperature)
    _positive("eval.max_new_tokens", ev.max_new_tokens)
    if not 0 < ev.top_p <= 1:
        raise ValueError(f"eval.top_p must be in (0, 1], got {ev.top_p!r}")
    _at_least("eval.every", ev.every, 0)
    for name in ("steps", "batch_size", "lr", "length_group", "max_grad_norm", "num_problems"):
        _positive(f"cold_start.{name}", getattr(sft, name))
    _at_least("cold_start.warmup_steps", sft.warmup_steps, 0)
    _at_least("cold_start.weight_decay", sft.weight_decay, 0)
    _choice("cold_start.schedule", sft.schedule, ("constant", "cosine"))
    for name in ("slip_prob", "check_prob", "space_prob"):
        _probability(f"cold_start.{name}", getattr(sft, name))


def _validate_levers(cfg: TrainConfig) -> None:
    """The study's levers: regime, reward and injection settings."""
    from pathlib import Path

    regime = cfg.regime
    _choice("regime.name", regime.name, ("full", "positive", "negative", "neg_to_pos", "weighted"))
    _choice("regime.select_by", regime.select_by, ("correctness", "advantage"))
    _choice("regime.second_phase", regime.second_phase, ("full", "positive"))
    if regime.positive_weight < 0 or regime.negative_weight < 0:
        raise ValueError("regime.positive_weight and regime.negative_weight must be >= 0")
    if regime.name == "neg_to_pos":
        if regime.switch_step is None and regime.switch_accuracy is None:
            raise ValueError("regime=neg_to_pos needs regime.switch_step or regime.switch_accuracy")
        if regime.switch_step is not None:
            _at_least("regime.switch_step", regime.switch_step, 0)
        if regime.switch_accuracy is not None:
            _probability("regime.switch_accuracy", regime.switch_accuracy)
        if regime.switch_accuracy is not None and cfg.eval.every <= 0:
            raise ValueError("regime.switch_accuracy needs periodic evaluation: set eval.every > 0")
    _choice("reward.name", cfg.reward.name, ("binary", "rlr"))
    if not 0 <= cfg.reward.tau <= 1:
        raise ValueError(f"reward.tau must be in [0, 1], got {cfg.reward.tau}")
    _positive("reward.b", cfg.reward.b)
    if cfg.reward.lo > cfg.reward.hi:
        raise ValueError(f"reward.lo must be <= reward.hi, got {cfg.reward.lo} > {cfg.reward.hi}")
    _choice("injection.name", cfg.injection.name, ("none", "osi"))
    if not 0 <= cfg.injection.alpha < 1:
        raise ValueError(f"injection.alpha must be in [0, 1), got {cfg.injection.alpha}")
    _positive("injection.cap", cfg.injection.cap)
    _positive("injection.gamma", cfg.injection.gamma)
    if cfg.injection.bank_path and not Path(cfg.injection.bank_path).expanduser().is_file():
        raise FileNotFoundError(f"injection.bank_path: no such file: {cfg.injection.bank_path}")
