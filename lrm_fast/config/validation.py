"""Checks beyond types, run before any work: ranges, required values, files that must exist.

Choices need no check here: their enums (lrm_fast/config/choices.py) already refuse anything else when
the config is composed. Every error is a ValueError (FileNotFoundError for a missing file) naming the key.
"""

import math
from pathlib import Path

from lrm_fast.config.choices import (
    AdvantageEstimator,
    AdvantageScale,
    CorrectionLevel,
    CorrectionMode,
    DataSource,
    Injection,
    ModelSource,
    Objective,
    RatioLevel,
    Regime,
    RolloutEngine,
    Sampling,
    Truncated,
)
from lrm_fast.config.datasets import check_source
from lrm_fast.config.evaluate import BUILTIN_BENCHMARKS, BenchmarkConfig, EvalAppConfig, EvalProtocol
from lrm_fast.config.train import AUTO_RESUME, DifficultyConfig, LongDifficultyConfig, TrainConfig


def _check(ok: bool, key: str, requirement: str, value) -> None:
    if not ok:
        raise ValueError(f"{key} must be {requirement}, got {value!r}")


def _positive(key: str, value) -> None:
    _check(value > 0, key, "> 0", value)


def _at_least(key: str, value, bound, why: str = "") -> None:
    _check(value >= bound, key, f">= {bound}{why}", value)


def _probability(key: str, value) -> None:
    _check(0 <= value <= 1, key, "in [0, 1]", value)


def validate(cfg: TrainConfig) -> None:
    """Every check of a `lrm-fast-train` config."""
    _validate_inputs(cfg)
    _validate_rollout(cfg)
    _validate_loss(cfg)
    _validate_levers(cfg)
    _validate_trainer(cfg)
    _validate_partial(cfg)
    validate_protocol(cfg.eval, "eval.")
    _positive("eval.problems", cfg.eval.problems)
    _at_least("eval.every", cfg.eval.every, 0)
    _validate_cold_start(cfg)
    check_difficulty(cfg.data.difficulty, "data.difficulty.")
    check_long_difficulty(cfg.data.long_difficulty, "data.long_difficulty.")


def _validate_inputs(cfg: TrainConfig) -> None:
    """The model and data the job reads: named where they must be."""
    _at_least("seed", cfg.seed, 0)
    if cfg.model.name == ModelSource.pretrained and not cfg.model.path:
        raise ValueError("model.path is required with model=pretrained (a local directory or HF cache id)")
    if cfg.data.name == DataSource.file and not cfg.data.train_path:
        raise ValueError("data.train_path is required with data=file")
    _positive("data.train_problems", cfg.data.train_problems)


def check_inputs(cfg: TrainConfig) -> None:
    """What the job reads exists: data files, the solution bank, the run to resume, the model (a local
    directory with a config.json, or a model in the HF cache). Run before any model is built."""
    if cfg.data.name == DataSource.file:
        check_source("data.train_path", cfg.data.train_path)
        check_source("data.heldout_path", cfg.data.heldout_path)
    if cfg.injection.name == Injection.osi:
        check_source("injection.bank_path", cfg.injection.bank_path)
    if cfg.trainer.resume not in (None, AUTO_RESUME) and not Path(cfg.trainer.resume).expanduser().is_dir():
        raise FileNotFoundError(f"trainer.resume: no such run directory: {cfg.trainer.resume}")
    if cfg.model.name == ModelSource.pretrained:
        check_model_path("model.path", cfg.model.path)


def check_world(cfg: TrainConfig, world_size: int) -> None:
    """What depends on the number of trainer ranks, known only at launch."""
    if cfg.trainer.max_staleness and world_size > 1 and cfg.sampling.name == Sampling.dynamic:
        # Its refill rounds end when every rank's share is full, and a worker samples the shares one after
        # another: it cannot ask that round by round.
        raise ValueError(
            f"sampling=dynamic with trainer.max_staleness > 0 needs one trainer rank (got {world_size}): "
            "run it with trainer.max_staleness=0, or in one process"
        )


def check_model_path(key: str, path: str) -> None:
    """A saved model directory, or a hub id whose config is in the HF cache (nothing is downloaded)."""
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{key}: {path} is not a saved model (it has no config.json)")
        return
    if path.startswith(("/", ".", "~")) or path.count("/") != 1:  # a path, not an org/name hub id
        raise FileNotFoundError(f"{key}: no such model directory: {path}")
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(path, "config.json"), str):
        raise FileNotFoundError(
            f"{key}: {path} is neither a local directory nor in the HF cache, and lrm_fast never downloads: "
            f"fetch it first (`hf download {path}`) or give a local path"
        )


def _validate_rollout(cfg: TrainConfig) -> None:
    rollout = cfg.rollout
    # A group of one response has advantage 0 (its own mean), so a run with G = 1 would train nothing.
    _at_least("rollout.group_size", rollout.group_size, 2, " (group-relative advantages need a group)")
    _positive("rollout.generation_batch_size", rollout.generation_batch_size)
    _positive("rollout.temperature", rollout.temperature)
    _check(0 < rollout.top_p <= 1, "rollout.top_p", "in (0, 1]", rollout.top_p)
    _positive("rollout.max_new_tokens", rollout.max_new_tokens)
    if rollout.tis_cap is not None:
        _at_least("rollout.tis_cap", rollout.tis_cap, 1, " (or null: off)")
    _validate_correction(cfg)
    utilization = rollout.gpu_memory_utilization
    _check(0 < utilization < 1, "rollout.gpu_memory_utilization", "in (0, 1)", utilization)
    _positive("rollout.tensor_parallel_size", rollout.tensor_parallel_size)
    _positive("rollout.sync_bucket_mb", rollout.sync_bucket_mb)


def _validate_correction(cfg: TrainConfig) -> None:
    """rollout.correction_*: bounds that exist, and a correction that does something."""
    rollout = cfg.rollout
    bounded = rollout.tis_cap is not None or rollout.correction_low is not None
    if rollout.correction_low is not None:
        low = rollout.correction_low
        _check(0 < low <= 1, "rollout.correction_low", "in (0, 1] (or null: no lower bound)", low)
        if rollout.correction_mode != CorrectionMode.mask:
            raise ValueError("rollout.correction_low bounds the mask; set rollout.correction_mode=mask")
    if rollout.correction_mode == CorrectionMode.mask and not bounded:
        raise ValueError(
            "rollout.correction_mode=mask needs a bound: rollout.tis_cap or rollout.correction_low"
        )
    # Synchronous and unbounded, the ratio is only measured (asynchronous rollouts always apply it).
    unused = not bounded and cfg.trainer.max_staleness == 0
    if rollout.correction_level == CorrectionLevel.sequence and unused:
        raise ValueError("rollout.correction_level=sequence needs rollout.tis_cap (or a mask's bound)")


def _validate_loss(cfg: TrainConfig) -> None:
    loss = cfg.loss
    # The ratio's lower bound 1 - clip_low must stay positive; CISPO's weight may drop to 0 (no bound).
    if loss.objective == Objective.cispo:
        _check(0 <= loss.clip_low <= 1, "loss.clip_low", "in [0, 1] with loss.objective=cispo", loss.clip_low)
        if loss.dual_clip is not None:
            raise ValueError("loss.dual_clip caps PPO's clipped loss; loss.objective=cispo has none")
    else:
        _check(0 <= loss.clip_low < 1, "loss.clip_low", "in [0, 1)", loss.clip_low)
    if RatioLevel(loss.ratio_level) == RatioLevel.sequence:
        if Objective(loss.objective) != Objective.clipped:
            raise ValueError("loss.ratio_level=sequence is GSPO's clipped loss; set loss.objective=clipped")
        if loss.dual_clip is not None:
            raise ValueError(
                "loss.dual_clip caps PPO's token loss; loss.ratio_level=sequence (GSPO) has none"
            )
    _at_least("loss.clip_high", loss.clip_high, 0)
    if loss.dual_clip is not None:
        _check(loss.dual_clip > 1, "loss.dual_clip", "> 1 (or null: off)", loss.dual_clip)
    if loss.sum_norm_length is not None:
        _positive("loss.sum_norm_length", loss.sum_norm_length)
    _at_least("loss.kl_coef", loss.kl_coef, 0)
    _at_least("loss.entropy_coef", loss.entropy_coef, 0)
    _positive("loss.micro_batch_tokens", loss.micro_batch_tokens)
    estimator, scale = AdvantageEstimator(loss.advantage_estimator), AdvantageScale(loss.advantage_scale)
    if estimator != AdvantageEstimator.grpo and scale != AdvantageScale.none:
        # RLOO is unscaled; REINFORCE++ divides by the batch's std, not each group's.
        raise ValueError(
            f"loss.advantage_estimator={estimator.value} takes loss.advantage_scale=none "
            f"(got {scale.value}): the group std is GRPO's; use the "
            f"loss={estimator.value} preset or set loss.advantage_scale=none"
        )
    if not cfg.injection.clip_policy_tokens and not cfg.injection.shaping:
        # The study drops the clip only inside its LUFFY loss; elsewhere the setting would do nothing.
        raise ValueError("injection.clip_policy_tokens=false needs injection.shaping=true (the LUFFY loss)")


def _validate_levers(cfg: TrainConfig) -> None:
    """The study's levers: regime, reward and injection settings."""
    _validate_regime(cfg)
    reward = cfg.reward
    _probability("reward.tau", reward.tau)
    _positive("reward.b", reward.b)
    _check(reward.lo <= reward.hi, "reward.lo", f"<= reward.hi ({reward.hi})", reward.lo)
    penalty = reward.repetition_penalty
    _check(penalty <= 0, "reward.repetition_penalty", "<= 0 (0: off)", penalty)
    _positive("reward.repetition_ngram", reward.repetition_ngram)
    if reward.truncated == Truncated.mask and penalty == 0:
        # The study masks only responses that carry a repetition penalty: without one it masks nothing.
        raise ValueError("reward.truncated=mask needs reward.repetition_penalty < 0, got 0")
    window = cfg.rollout.max_new_tokens
    buffer_ok = 0 <= reward.overlong_buffer < window
    _check(
        buffer_ok,
        "reward.overlong_buffer",
        f"in [0, rollout.max_new_tokens ({window})) (0: off)",
        reward.overlong_buffer,
    )
    _at_least("reward.overlong_penalty", reward.overlong_penalty, 0)
    _at_least("reward.kl_coef", reward.kl_coef, 0)
    _validate_sampling(cfg)
    injection = cfg.injection
    _check(0 <= injection.alpha < 1, "injection.alpha", "in [0, 1)", injection.alpha)
    if injection.cap is not None:
        _at_least("injection.cap", injection.cap, 1, " (or null: no cap)")
    _positive("injection.gamma", injection.gamma)


def _validate_sampling(cfg: TrainConfig) -> None:
    sampling = cfg.sampling
    _at_least("sampling.oversample", sampling.oversample, 1)
    _at_least("sampling.max_rounds", sampling.max_rounds, 1)
    # Prompts per round against the dataset's size: load_run_data, once the data is read.


def round_prompts(cfg: TrainConfig) -> int:
    """Prompts one sampling round draws: B, or ceil(oversample * B) under dynamic sampling."""
    B = cfg.trainer.prompts_per_step
    return B if cfg.sampling.name == Sampling.static else math.ceil(cfg.sampling.oversample * B)


def _validate_regime(cfg: TrainConfig) -> None:
    regime = cfg.regime
    if regime.positive_weight < 0 or regime.negative_weight < 0:
        raise ValueError("regime.positive_weight and regime.negative_weight must be >= 0")
    _probability("regime.reserve_ratio", regime.reserve_ratio)
    _at_least("regime.reserve_min", regime.reserve_min, 0)
    if regime.name == Regime.neg_to_pos:
        if regime.switch_step is None and regime.switch_accuracy is None:
            raise ValueError("regime=neg_to_pos needs regime.switch_step or regime.switch_accuracy")
        if regime.switch_step is not None:
            _at_least("regime.switch_step", regime.switch_step, 0)
        if regime.switch_accuracy is not None:
            _probability("regime.switch_accuracy", regime.switch_accuracy)
            if cfg.eval.every <= 0:
                raise ValueError("regime.switch_accuracy needs periodic evaluation: set eval.every > 0")


def _validate_trainer(cfg: TrainConfig) -> None:
    trainer = cfg.trainer
    for name in ("steps", "prompts_per_step", "lr", "checkpoint_every", "grad_clip"):
        _positive(f"trainer.{name}", getattr(trainer, name))
    _at_least("trainer.warmup_steps", trainer.warmup_steps, 0)
    _at_least("trainer.weight_decay", trainer.weight_decay, 0)
    _at_least("trainer.keep_checkpoints", trainer.keep_checkpoints, 1)
    _at_least("trainer.max_bad_steps", trainer.max_bad_steps, 1)
    _at_least("trainer.mini_batches", trainer.mini_batches, 1)
    _at_least("trainer.epochs", trainer.epochs, 1)
    _at_least("trainer.update_threads", trainer.update_threads, 0)
    _at_least("trainer.max_staleness", trainer.max_staleness, 0)
    _at_least("trainer.rollout_workers", trainer.rollout_workers, 0)
    _at_least("trainer.remote_rollout_workers", trainer.remote_rollout_workers, 0)
    _check(0 <= trainer.rollout_port < 65536, "trainer.rollout_port", "a TCP port (0: any free one)",
           trainer.rollout_port)  # fmt: skip
    if trainer.max_staleness and trainer.rollout_workers + trainer.remote_rollout_workers == 0:
        raise ValueError(
            "trainer.max_staleness > 0 needs a rollout worker: trainer.rollout_workers or "
            "trainer.remote_rollout_workers >= 1"
        )
    if trainer.rollout_devices:
        entries = len(trainer.rollout_devices) == trainer.rollout_workers
        requirement = f"one entry per rollout worker ({trainer.rollout_workers})"
        _check(entries, "trainer.rollout_devices", requirement, trainer.rollout_devices)
        for entry in trainer.rollout_devices:
            valid = all(part.isdigit() for part in str(entry).split(","))
            _check(valid, "trainer.rollout_devices", 'CUDA device lists such as "4" or "5,6"', entry)
    if trainer.remote_rollout_workers and not trainer.max_staleness:
        raise ValueError(
            "trainer.remote_rollout_workers needs asynchronous rollouts (trainer.max_staleness > 0): the "
            "synchronous loop samples in the trainer's own processes"
        )
    if trainer.remote_rollout_workers and not trainer.rollout_port:
        raise ValueError(
            "trainer.remote_rollout_workers needs trainer.rollout_port: the port their "
            "`lrm-fast-rollout-worker --address HOST:PORT` joins"
        )
    if trainer.max_staleness:
        # A rollout batch's update is mini_batches x epochs optimizer steps: the lag is counted in whole
        # batches.
        per_batch = trainer.mini_batches * trainer.epochs
        requirement = (
            f"a multiple of trainer.mini_batches x trainer.epochs ({trainer.mini_batches} x "
            f"{trainer.epochs} = {per_batch} optimizer steps per rollout batch)"
        )
        multiple = trainer.max_staleness % per_batch == 0
        _check(multiple, "trainer.max_staleness", requirement, trainer.max_staleness)
    if trainer.token_budget is not None:
        _positive("trainer.token_budget", trainer.token_budget)
    # Equal mini-batches of whole groups, as verl's (its train_batch_size is a multiple of the mini-batch).
    divides = trainer.prompts_per_step % trainer.mini_batches == 0
    requirement = f"a divisor of trainer.prompts_per_step ({trainer.prompts_per_step})"
    _check(divides, "trainer.mini_batches", requirement, trainer.mini_batches)


def _validate_partial(cfg: TrainConfig) -> None:
    """Partial rollouts (lrm_fast/rollout/partial.py): a pool of our decode loop in each rollout worker."""
    steps = cfg.rollout.partial_steps
    if steps is None:
        return
    _positive("rollout.partial_steps", steps)
    trainer = cfg.trainer
    if not trainer.max_staleness:
        raise ValueError(
            "rollout.partial_steps needs asynchronous rollouts (trainer.max_staleness >= "
            "trainer.mini_batches x trainer.epochs): a synchronous step lands no weights while it samples"
        )
    if cfg.rollout.backend != RolloutEngine.hf:
        raise ValueError(
            "rollout.partial_steps needs rollout=hf: the vLLM backend samples a batch in one engine call, "
            "which takes no weights while it runs"
        )
    if cfg.sampling.name != Sampling.static:
        raise ValueError(
            "rollout.partial_steps needs sampling=static: dynamic sampling's refill rounds depend on the "
            "first round's scores, which a pool that lands requests at fixed decode steps cannot wait for"
        )
    # Batch n's worker lands its next request (n + W) after partial_steps decode steps, and the trainer makes
    # that request at step n + W - lag. For batch n to end while batch n - 1 is trained (never making the
    # trainer wait for a landing of its own step, or deadlocking on one of the next), it must end within the
    # landings of requests made before step n: its own and (lag - 1) // W more.
    lag = trainer.max_staleness // (trainer.mini_batches * trainer.epochs)
    workers = trainer.rollout_workers + trainer.remote_rollout_workers
    landings = (lag - 1) // workers + 1
    enough = steps * landings >= cfg.rollout.max_new_tokens
    least = -(-cfg.rollout.max_new_tokens // landings)
    requirement = (
        f"at least ceil(rollout.max_new_tokens / {landings}) = {least}: a batch must end within the "
        f"{landings} landing(s) its worker has before the step that trains it (lag {lag}, {workers} "
        "worker(s); a longer lag allows more)"
    )
    _check(enough, "rollout.partial_steps", requirement, steps)


def _validate_cold_start(cfg: TrainConfig) -> None:
    sft = cfg.cold_start
    for name in ("steps", "batch_size", "lr", "length_group", "max_grad_norm", "num_problems"):
        _positive(f"cold_start.{name}", getattr(sft, name))
    _at_least("cold_start.warmup_steps", sft.warmup_steps, 0)
    _at_least("cold_start.weight_decay", sft.weight_decay, 0)
    for name in ("slip_prob", "check_prob", "space_prob"):
        _probability(f"cold_start.{name}", getattr(sft, name))


def check_difficulty(difficulty: DifficultyConfig, prefix: str = "") -> None:
    """The built-in task's generator settings (also checked by the generator itself)."""
    d = difficulty
    _min_max(f"{prefix}min_operands/max_operands", d.min_operands, d.max_operands, 2)
    _min_max(f"{prefix}min_digits/max_digits", d.min_digits, d.max_digits, 1, 6)
    valid_operators = bool(d.operators) and not set(d.operators) - set("+-*")
    _check(valid_operators, f"{prefix}operators", "a non-empty subset of '+-*'", d.operators)
    _probability(f"{prefix}parentheses_prob", d.parentheses_prob)
    _check(0 < d.held_out_fraction < 1, f"{prefix}held_out_fraction", "in (0, 1)", d.held_out_fraction)


def check_long_difficulty(difficulty: LongDifficultyConfig, prefix: str = "") -> None:
    """The built-in long task's generator settings (also checked by the generator itself)."""
    d = difficulty
    _min_max(f"{prefix}min_multiplier/max_multiplier", d.min_multiplier, d.max_multiplier, 1)
    _min_max(f"{prefix}min_digits/max_digits", d.min_digits, d.max_digits, 1, 6)
    _check(0 < d.held_out_fraction < 1, f"{prefix}held_out_fraction", "in (0, 1)", d.held_out_fraction)


def _min_max(key: str, low: int, high: int, floor: int, ceiling: int | None = None) -> None:
    """A (min, max) pair of settings: floor <= min <= max (<= ceiling)."""
    ok = floor <= low <= high and (ceiling is None or high <= ceiling)
    _check(ok, key, f"{floor} <= min <= max" + ("" if ceiling is None else f" <= {ceiling}"), (low, high))


def validate_protocol(protocol: EvalProtocol, prefix: str = "") -> None:
    """An evaluation protocol's ranges (keys prefixed as in the config that holds it)."""
    p = protocol
    for name in ("samples_per_problem", "max_new_tokens", "max_rounds"):
        _at_least(f"{prefix}{name}", getattr(p, name), 1)
    _check(p.temperature > 0, f"{prefix}temperature", "> 0 (greedy decoding is greedy=true)", p.temperature)
    _check(0 < p.top_p <= 1, f"{prefix}top_p", "in (0, 1]", p.top_p)
    bounds = (p.uncertain_lo, p.uncertain_hi)
    _check(0 <= bounds[0] < bounds[1] <= 1, f"{prefix}uncertain_lo/uncertain_hi", "0 <= lo < hi <= 1", bounds)
    _check(0 < p.confidence_level < 1, f"{prefix}confidence_level", "in (0, 1)", p.confidence_level)
    _at_least(f"{prefix}target_ci_width", p.target_ci_width, 0)
    if p.samples_per_round is not None:
        _at_least(f"{prefix}samples_per_round", p.samples_per_round, 1)
    if p.budget is not None:
        _at_least(f"{prefix}budget", p.budget, p.samples_per_problem, " (the first round's k)")


def validate_eval(cfg: EvalAppConfig) -> None:
    """Every check of a `lrm-fast-eval` config."""
    validate_protocol(cfg)
    utilization = cfg.gpu_memory_utilization
    _check(0 < utilization < 1, "gpu_memory_utilization", "in (0, 1)", utilization)
    _at_least("tensor_parallel_size", cfg.tensor_parallel_size, 1)
    _at_least("generation_batch_size", cfg.generation_batch_size, 1)
    _check(len(cfg.benchmarks) > 0, "benchmarks", "a non-empty list", cfg.benchmarks)
    names = [spec.name for spec in cfg.benchmarks]
    _check(len(set(names)) == len(names), "benchmarks", "a list of distinct names", names)
    for index, spec in enumerate(cfg.benchmarks):
        _validate_benchmark(f"benchmarks[{index}]", spec)
    if cfg.budget is not None:
        k_max = max(spec.samples_per_problem or cfg.samples_per_problem for spec in cfg.benchmarks)
        _at_least("budget", cfg.budget, k_max, " (the first round's k)")


def _validate_benchmark(key: str, spec: BenchmarkConfig) -> None:
    for field_name in ("problems", "samples_per_problem", "max_new_tokens"):
        value = getattr(spec, field_name)
        if value is not None:
            _check(value >= 1, f"{key}.{field_name}", ">= 1 or null", value)
    if spec.template is not None:
        _check(
            "{problem}" in spec.template, f"{key}.template", "a string containing {problem}", spec.template
        )
    if spec.path.startswith("builtin:"):
        _check(
            spec.path in BUILTIN_BENCHMARKS, f"{key}.path", f"one of {list(BUILTIN_BENCHMARKS)}", spec.path
        )
        return
    check_source(f"{key}.path", spec.path)  # a dataset by name: checked without reading it
