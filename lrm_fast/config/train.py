"""Typed configuration of `lrm-fast-train`: one dataclass per concern, the one definition of every key.

The YAML files in conf/ only choose between real alternatives and set values; these schemas define every
key, its type and its default, so an unknown key or a wrong type fails at composition, before any work
(lrm_fast/cli registers them in Hydra's ConfigStore; nothing here imports Hydra). Defaults are the
embedded CPU task's; conf/experiment/ files carry the study's settings (PAPER.md).
"""

from dataclasses import dataclass, field

from lrm_fast.config.choices import (
    AdvantageEstimator,
    AdvantageScale,
    Aggregation,
    AttnImplementation,
    CorrectionLevel,
    CorrectionMode,
    DataSource,
    Informative,
    Injection,
    LRSchedule,
    MixedPrecision,
    ModelSource,
    Objective,
    PackedAttention,
    RatioLevel,
    Regime,
    Reward,
    RolloutEngine,
    Sampling,
    SecondPhase,
    SelectBy,
    ShortBatch,
    Tracker,
    Truncated,
)
from lrm_fast.config.evaluate import EvalProtocol
from lrm_fast.kernels import Backend

AUTO_RESUME = "auto"  # trainer.resume's value for a launch's own directory (TrainerConfig.resume)
# Where a run executes, not what it trains: CPU thread counts change the order of float sums only, so a
# resume may change them (lrm_fast/cli/resume.py) and they never split a sweep's configurations
# (lrm_fast/sweeps/runs.py).
CPU_THREAD_KEYS = ("trainer.num_threads", "trainer.update_threads")


@dataclass
class TinyModelConfig:
    """Shape of the built-in tiny Qwen2 model (DESIGN.md calibration: 0.79M parameters with the
    arithmetic task's vocabulary; tied embeddings, no grouped-query attention at this size)."""

    hidden_size: int = 128  # width of the residual stream; head_dim = hidden_size / num_heads
    num_layers: int = 3  # transformer blocks
    num_heads: int = 4  # head_dim must be >= 32 (vLLM's CPU attention needs it)
    intermediate_size: int = 512  # width of the SwiGLU MLP (4x hidden)
    max_position_embeddings: int = 256  # longest prompt + response; the arithmetic task needs under 80


@dataclass
class ModelConfig:
    """The policy (and, with a KL term, the frozen reference: a copy of the starting weights)."""

    name: ModelSource = ModelSource.tiny
    path: str | None = None  # local directory or HF cache id (never downloaded) for name=pretrained
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    attn_implementation: AttnImplementation = AttnImplementation.sdpa
    activation_checkpointing: bool = False  # recompute block activations in backward (long responses)


@dataclass
class ColdStartConfig:
    """SFT cold start of the tiny model: the stand-in for the study's R1-distilled starting point
    (lrm_fast/model/cold_start.py). Every key but cache_dir is part of the cache key."""

    steps: int = 600  # optimizer steps (the README gives the accuracy the default reaches)
    batch_size: int = 64  # sequences per step
    lr: float = 1e-3  # peak AdamW learning rate
    warmup_steps: int = 100  # linear warmup from 0 to lr
    schedule: LRSchedule = LRSchedule.constant  # after warmup (cosine: to 0 at the last step)
    # Batches are drawn from windows of this many length-sorted batches (1: plain shuffled batches);
    # 8 pads about 40% fewer tokens.
    length_group: int = 8
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradient-norm clip
    num_problems: int = 20_000  # distinct training problems the SFT batches come from
    # Train only on the teacher's responses of at most this many tokens (null: all): a distilled model is
    # trained at a shorter context than RL then samples at, and short examples make SFT steps cheap. The
    # long task's preset sets it (conf/model/tiny_long.yaml).
    max_response_tokens: int | None = None
    seed: int = 0  # model initialisation, problems, the teacher's solutions and the batch order
    # The teacher stands in for the study's R1-distilled start (lrm_fast/data/arithmetic.py): it slips (a
    # share of its solutions has one wrong step carried to a wrong answer, so the cold start makes errors
    # RL can remove) and writes correct responses of varied length (checks and optional spaces), which
    # the relative length reward can shorten and a binary reward has no reason to.
    slip_prob: float = 0.4
    check_prob: float = 0.2  # chance of a check step (the step computed again) after each step
    space_prob: float = 0.5  # chance of a space after <think> and each comma (length nothing depends on)
    # Where trained cold starts are kept, one directory per hash of the settings above (reused when they
    # match). None: $LRM_FAST_CACHE/cold_start, or ~/.cache/lrm_fast/cold_start without that variable.
    cache_dir: str | None = None


@dataclass
class DifficultyConfig:
    """Built-in arithmetic task (lrm_fast/data/arithmetic.py): operands per problem, digits per operand."""

    min_operands: int = 2  # at least 2
    max_operands: int = 4
    min_digits: int = 1  # 1-digit operands include 0; the digit count is drawn first, then the value
    max_digits: int = 1  # 1-digit operands; values still reach the hundreds (9*9*9 = 729)
    operators: str = "+-*"  # drawn uniformly for each gap; a non-empty subset of "+-*"
    # Probability that one random sub-expression of 2 or more operands is put in parentheses.
    parentheses_prob: float = 0.0
    held_out_fraction: float = 0.1  # share of all problem texts (by hash) in the held-out split


@dataclass
class LongDifficultyConfig:
    """Built-in long reasoning task (lrm_fast/data/long_arithmetic.py): a one-digit term added to a start
    value many times, ``c+b*a``, one step a line, so the response grows with the multiplier a."""

    # The multiplier a, drawn log-uniformly: the number of steps, so the response length's main knob.
    # 6-100 gives reference responses of about 100-1,500 tokens (the module docstring has the figures).
    min_multiplier: int = 6  # at least 1
    max_multiplier: int = 100
    # Digits of the start value c, drawn first, then the value (1 digit includes 0).
    min_digits: int = 1
    max_digits: int = 2  # at most 6
    held_out_fraction: float = 0.1  # share of all problem texts (by hash) in the held-out split


@dataclass
class DataConfig:
    """Prompts: a built-in task (name=arithmetic or long_arithmetic) or datasets (name=file;
    lrm_fast/config/datasets.py)."""

    name: DataSource = DataSource.arithmetic
    seed: int = 0  # generator seed of the built-in tasks (splits are disjoint by construction)
    train_problems: int = 20_000  # size of the built-in task's GRPO prompt pool
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)  # name=arithmetic
    long_difficulty: LongDifficultyConfig = field(default_factory=LongDifficultyConfig)  # long_arithmetic
    # A dataset: catalogue:NAME (conf/catalogue.yaml, the study's data), a local .json/.jsonl/.parquet
    # file or dataset folder, an http(s) URL of such a file, or a Hugging Face Hub dataset id.
    train_path: str | None = None
    heldout_path: str | None = None  # the held-out prompts (validation); null: none
    # Settings of those datasets; null keeps a catalogue entry's own, else the default (split "train",
    # the dataset's default subset, the newest revision). subset and revision apply to both paths.
    train_split: str | None = None
    heldout_split: str | None = None
    subset: str | None = None  # the hub dataset's configuration (load_dataset's `name`)
    revision: str | None = None  # commit, tag or branch of a hub dataset (pins it)
    # Column mapping; null keeps a catalogue entry's own, else the name shown. A dotted name reaches into
    # a struct column (reward_model.ground_truth); a chat column gives its last user message.
    problem_key: str | None = None  # "problem"
    answer_key: str | None = None  # "answer"
    id_key: str | None = None  # "id"; the row index where absent
    solutions_key: str | None = None  # "solutions": stored correct solutions for injection=osi
    # The study's (DeepScaleR's) instruction, appended to every problem of a real dataset (the study's own
    # training files carry it in their prompts: their catalogue entries remove it, so it is added once).
    prompt_suffix: str = " Let's think step by step and output the final answer within \\boxed{}."


@dataclass
class RolloutConfig:
    """Sampling of G responses per prompt."""

    backend: RolloutEngine = RolloutEngine.hf  # hf: the training model itself; vllm: a colocated engine
    group_size: int = 8  # G
    temperature: float = 1.0  # study: 0.6 for R1-distilled models
    top_p: float = 1.0
    max_new_tokens: int = 64  # study: 8k / 16k / 24k; the tiny task's reference answers take <= 57
    generation_batch_size: int = 256  # sequences per generate() call (hf)
    # Sampler / trainer mismatch: every step logs mean |logp_trainer - logp_sampler| and the mean token
    # probability ratio (rollout/logp_abs_diff, rollout/prob_ratio) from one extra no-grad pass over the
    # logits; with tis_cap, each token's loss is weighted by min(p_trainer / p_sampler, tis_cap)
    # (truncated importance sampling: vLLM's numerics differ from the trainer's). None: off, except with
    # trainer.max_staleness > 0, where stale tokens are always weighted and None means no cap.
    log_mismatch: bool = False
    tis_cap: float | None = None
    # Rollout correction beyond token-level truncation (lrm_fast/training/sampler_correction.py): the ratio
    # of each token (token) or its sequence's geometric mean (sequence), truncated at tis_cap (truncate)
    # or kept inside [correction_low, tis_cap] and 0 outside (mask: IcePop's; correction_low null: no
    # lower bound). The defaults are tis_cap's meaning above.
    correction_level: CorrectionLevel = CorrectionLevel.token
    correction_mode: CorrectionMode = CorrectionMode.truncate
    correction_low: float | None = None
    # Partial rollouts (lrm_fast/rollout/partial.py; asynchronous rollouts with rollout=hf): each rollout
    # worker decodes its unfinished responses across weight updates, and the next batch lands with its weights
    # every partial_steps decode steps. None: off (each batch is sampled to its end with its own weights).
    partial_steps: int | None = None
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

    # Every normaliser is global: computed over the whole mini-batch before the micro-batch loop
    # (lrm_fast/batching/samples.py). The study's scripts weight each micro-batch's token mean by its share
    # of sequences (micro_batch_token_mean, use_dynamic_bsz: dp_actor.py:351-353); its LUFFY run sums
    # tokens instead (micro_batch_token_sum, loss_remove_token_mean=True: Luffy_loss.sh:64,
    # core_algos.py:392-393). Those two depend on the cut into micro-batches (micro_batch_tokens); equal to
    # token_mean / token_sum when a mini-batch is one micro-batch.
    aggregation: Aggregation = Aggregation.token_mean
    # The constant C of seq_mean_token_sum_norm (Dr. GRPO) and of the token sums; None:
    # rollout.max_new_tokens (the study's C: the padded response length, max_response_length).
    sum_norm_length: int | None = None
    advantage_scale: AdvantageScale = AdvantageScale.std
    # grpo (the group mean as baseline, scaled by advantage_scale), rloo (leave-one-out baseline, unscaled)
    # or reinforce_pp (group mean, then over the whole batch's std, in the trainer): rloo and reinforce_pp
    # take advantage_scale=none, since their scale is their own (the loss=rloo / reinforce_pp presets).
    advantage_estimator: AdvantageEstimator = AdvantageEstimator.grpo
    # clipped (PPO's clipped ratio) or cispo (the clipped ratio, detached, weighs -A logp); clip_low and
    # clip_high bound the ratio of either, [1 - clip_low, 1 + clip_high] (cispo: clip_low up to 1, no
    # lower bound; no dual_clip).
    objective: Objective = Objective.clipped
    # token (each token's ratio) or sequence (GSPO: the geometric mean of the sequence's token ratios,
    # clipped per sequence; objective=clipped and no dual_clip). Acts from a rollout batch's second
    # optimizer step on (trainer.mini_batches or trainer.epochs > 1): before it, every ratio is 1.
    ratio_level: RatioLevel = RatioLevel.token
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0  # study: 0.001 (k3 estimator); > 0 keeps a frozen reference model
    entropy_coef: float = 0.0  # study's scripts: 0.001
    backend: Backend = Backend.auto  # the kernels': triton on CUDA tensors, torch otherwise
    # Loss from the final hidden states and the LM head's weight (kernels.grpo_loss_from_hidden), in chunks
    # of tokens: the [N, V] logits and their gradient never exist. Same loss and gradients; pays off when
    # N * V dominates memory (long responses, 128k-152k vocabularies), not at the tiny default.
    fused_head: bool = False
    micro_batch_tokens: int = 8192  # token budget (prompt + response) of one forward/backward
    # Packed micro-batches (lrm_fast/batching/micro_batches.py): the sequences end to end in one row, no
    # padding, so the budget counts real tokens. Pays off when lengths vary a lot (long reasoning traces).
    packing: bool = False
    packed_attention: PackedAttention = PackedAttention.auto  # attention within the packed sequences


@dataclass
class RegimeConfig:
    """Which responses enter the update, and with what weight (PAPER.md §2; lrm_fast/levers/regimes.py)."""

    name: Regime = Regime.full  # neg_to_pos: negative first, then `second_phase`
    select_by: SelectBy = SelectBy.correctness
    # False (the study): weights keep the full batch's normalisers, so a pruned step is smaller: by the
    # kept share of tokens under loss.aggregation=token_mean, by the kept share of responses (K/S) under
    # the per-sequence aggregations and the study's micro_batch_* ones (its loss is each micro-batch's
    # token mean times that micro-batch's share of the S sequences, dp_actor.py:351-353). True:
    # normalisers count only the responses the regime keeps, so the kept ones carry a full-size update.
    renormalise: bool = False
    # regime=positive / negative (and neg_to_pos's phases): each response the regime would drop is kept
    # with probability reserve_ratio, then dropped ones are kept at random until at least reserve_min
    # responses (wanted ones included) are kept. Study: cut_down_samples_reserve_ratio and _min_num, 0 and 0
    # in its scripts (ray_trainer.py:767-809; defaults 0.25 and 512 in ppo_trainer.yaml:187-188).
    reserve_ratio: float = 0.0
    reserve_min: int = 0
    positive_weight: float = 1.0  # regime=weighted: scale of positive responses (W-REINFORCE: 0.1)
    negative_weight: float = 1.0  # regime=weighted: scale of negative responses
    switch_step: int | None = None  # neg_to_pos: steps 1..switch_step are negative-only
    switch_accuracy: float | None = None  # neg_to_pos: switch after a held-out eval reaches it
    second_phase: SecondPhase = SecondPhase.full  # neg_to_pos: the regime after the switch
    # Zero-variance groups have A = 0 and no policy gradient: skip their forward pass. Their tokens still
    # count in the normalisers, and in the micro-batch cut the study's aggregations weight by
    # (micro_batch_*), so dropping them changes no other response's weight: only their KL / entropy terms
    # are lost. With the KL in the reward (reward.kl_coef) their advantages are not 0 and they stay.
    drop_zero_variance: bool = True


@dataclass
class RewardConfig:
    """Reward of a response (PAPER.md §1, §4; lrm_fast/levers/rewards.py)."""

    name: Reward = Reward.binary  # binary: 1 if the last \\boxed{} answer is correct, else 0
    # Which part of a response holds its answer (lrm_fast/data/grader.py). True: the study's rule
    # (deepscaler/rewards/math_reward.py:36-39 of its code): a response without </think> scores 0, even
    # with the right answer boxed while reasoning, and only the text between the first </think> and the
    # next one is graded. False: the text after the last </think>, or all of it without one (the built-in
    # task's traces always close </think>). The study's experiment files set it.
    think_format: bool = False
    # rlr: groups with accuracy >= tau shape each correct response by 1 + clip((mean_len - len) / b, lo, hi)
    tau: float = 0.75
    b: float = 500.0  # tokens
    lo: float = -0.5
    hi: float = 1.0
    # Repetition reward, added to binary or RLR rewards: an incorrect response gets
    # (1 - distinct / total word n-grams of its prompt + response text) * repetition_penalty, so this is
    # the reward of a fully repeated one (<= 0; 0: off). Study (Luffy_loss.sh:42-44): -2 with 40-grams
    # (deepscaler.py:110-142; its defaults: off, -0.5, 40).
    repetition_penalty: float = 0.0
    repetition_ngram: int = 40
    # Responses that fill the response window (rollout.max_new_tokens), one implementation with two rules
    # (lrm_fast/levers/scoring.py). mask: advantage 0 for an incorrect one that carries a repetition
    # penalty (still in the normalisers; needs repetition_penalty < 0); the study's
    # mask_truncated_samples=True in Luffy_loss.sh:41 (core_algos.py:156-161). filter: every one without a
    # final EOS leaves the loss and its normalisers (DAPO's overlong filtering). The group's mean and std
    # count them under both rules.
    truncated: Truncated = Truncated.keep
    # DAPO's soft overlong punishment, added to every response's reward: 0 up to L_max - overlong_buffer
    # tokens, then falling linearly to -overlong_penalty at L_max = rollout.max_new_tokens (0: off).
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    # The KL in the reward: kl_coef * sum_t (log pi - log pi_ref) (k1, at the rollout temperature) is
    # subtracted from each response's reward before the advantages (0: off). The study's trainer does this
    # whenever its KL loss is off (RLR_8k, Luffy_loss: 0.001, algorithm.kl_ctrl.kl_coef, ray_trainer.py
    # apply_kl_penalty). Keeps a frozen reference model; zero-variance accounting, dynamic sampling and
    # RLR still go by the task reward (lrm_fast/levers/scoring.py).
    kl_coef: float = 0.0


@dataclass
class InjectionConfig:
    """Offline sample injection into too-hard groups (PAPER.md §5; lrm_fast/levers/injection.py)."""

    name: Injection = Injection.none
    alpha: float = 0.125  # groups with accuracy <= alpha receive stored correct solutions
    # At most this many responses replaced per group; null: no cap, the study's default and its released
    # run (max_inject_num = -1: ppo_trainer.yaml:184, ray_trainer.py:863). The embedded task keeps 1, so
    # an all-wrong group gets one correct response and variance; with no cap and at least G usable
    # solutions it becomes all correct and has zero advantage again.
    cap: int | None = 1
    # Solution bank: null reads the training dataset's solutions column (data.solutions_key; the built-in
    # task has one); else a separate dataset (any source data.train_path accepts) with `id` and
    # `solutions` columns (a catalogue entry: its own), keyed by problem id.
    bank_path: str | None = None
    # LUFFY-style shaping of injected tokens: loss -A * p / (p + gamma), unclipped (their released run)
    shaping: bool = False
    gamma: float = 0.1
    # With shaping, whether the policy's own tokens keep the clip (loss.clip_low / clip_high). False: the
    # study's LUFFY loss, -A * rho unclipped (core_algos.py:361; Luffy_loss.sh's clip_ratio 0.35 is never
    # read there). Acts only with shaping.
    clip_policy_tokens: bool = True


@dataclass
class SamplingConfig:
    """Which sampled groups a step trains on (lrm_fast/levers/dynamic_sampling.py)."""

    name: Sampling = Sampling.static  # dynamic: DAPO's dynamic sampling
    # dynamic: each round samples ceil(oversample * B) prompts; rounds stop once B informative groups are
    # found or after max_rounds. DAPO's recipe: gen_batch_size = 3 * train_batch_size, max_num_gen_batches.
    oversample: float = 1.0
    max_rounds: int = 4
    informative: Informative = Informative.reward  # judged after rewards, RLR and OSI
    # fewer: train on the informative groups found (zero-variance groups carry no policy gradient, but for
    # the KL in the reward's noise; padding with them only shrinks the step through the normalisers). pad:
    # top up to B groups with zero-variance ones, so the normalisers count B groups as in a static step.
    when_short: ShortBatch = ShortBatch.fewer


@dataclass
class EvalConfig(EvalProtocol):
    """Held-out evaluation before training, every `every` steps and at the end, with the multi-round
    evaluator (the protocol's keys; lrm_fast/evaluation/multi_round.py). The defaults are the tiny task's:
    one sample per problem at the rollout temperature; `lrm-fast-eval model.path=RUN/final_model`
    evaluates the result with more samples and rounds."""

    problems: int = 1000  # DESIGN.md: 500 problems give about +/-3 points
    every: int = 0  # steps between evaluations (0: only before and after training)
    samples_per_problem: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    greedy: bool = False


@dataclass
class TrainerConfig:
    """Optimisation, checkpoints and logging."""

    steps: int = 200  # rollout steps (each samples B * G responses)
    prompts_per_step: int = 32  # B; B * G responses per step
    # Optimizer steps per rollout batch: its responses are cut into this many mini-batches of whole groups,
    # each normalised on its own, and `epochs` passes are made over them; the log-probs of the policy that
    # sampled are recorded once before the first step, so the clip acts from the second step on. verl's
    # train_batch_size / ppo_mini_batch_size and ppo_epochs: 64 / 64 and 1 in the study's baseline scripts,
    # 128 / 64 = 2 and 1 in Luffy_loss.sh:47,55-56. Metrics average over the steps (optim/steps counts
    # them); the learning-rate schedule (warmup_steps, steps) counts rollout steps, as verl's does.
    mini_batches: int = 1
    epochs: int = 1
    lr: float = 1e-4  # study: 1e-6 (1.5B model); the tiny model needs far more
    lr_schedule: LRSchedule = LRSchedule.constant  # after linear warmup
    warmup_steps: int = 20  # rollout steps
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    # A step with a non-finite loss, gradient norm, updated parameter or sampled logit is skipped or rolled
    # back (lrm_fast/training/guard.py); after this many such steps with no good update between them the
    # run stops, leaving a checkpoint.
    max_bad_steps: int = 3
    checkpoint_every: int = 50  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 2
    # The run directory of a killed run to continue, or `auto`: this launch's own directory (hydra.run.dir,
    # or the job's folder under a fixed hydra.sweep.dir) is kept as it is when it holds a finished run of
    # the same trainer.steps, continued when it holds a started one (or a finished one asked for other
    # steps), and used for a new run otherwise: a sweep started again with the same sweep directory skips
    # its finished runs and continues the killed one.
    resume: str | None = None
    mixed_precision: MixedPrecision = MixedPrecision.auto
    # Stop after the step whose cumulative generated response tokens reach this many (null: `steps` only):
    # compares configurations at an equal rollout-token budget. The schedule still counts `steps`.
    token_budget: int | None = None
    num_threads: int = 0  # torch intra-op threads on CPU (0: torch's default; the tiny model runs best on 1)
    # Threads of the policy update on CPU, so sampling can stay on one thread while the update uses more
    # cores. 0: every core (torch's default), less the rollout process's num_threads with max_staleness > 0.
    # Measured on 2 cores (benchmarks/RESULTS.md): the update takes 40% less time on both than on one.
    update_threads: int = 0
    # Asynchronous rollouts (lrm_fast/training/async_rollout.py): 0 is the synchronous loop; k >= 1 samples
    # later batches in rollout workers (processes of their own) while the current one is trained, no batch's
    # update starting more than k optimizer steps after the weights that sampled it. A multiple of
    # mini_batches x epochs (the optimizer steps of one rollout batch). Any number of trainer ranks.
    max_staleness: int = 0
    # Rollout workers that trainer rank 0 starts with max_staleness > 0; batch n goes to worker n mod W, every
    # worker gets every weight push (lrm_fast/training/rollout_worker.py).
    rollout_workers: int = 1
    # Rollout workers started apart, on any host, by `lrm-fast-rollout-worker --address HOST:rollout_port`:
    # rank 0 waits for them at its start (up to 5 minutes). They need rollout_port (rank 0's store listens on
    # it, on every interface); 0 with none of them: any free port.
    remote_rollout_workers: int = 0
    rollout_port: int = 0
    # The GPUs of each worker rank 0 starts (its CUDA_VISIBLE_DEVICES: "4", "5,6"), one entry per worker: a
    # rollout=hf worker samples on them, a vLLM worker's engine runs on them. Empty: on the CPU (vLLM: the
    # trainer's devices). A worker started apart takes them from its command (--devices).
    rollout_devices: list[str] = field(default_factory=list)
    progress_bar: bool = True
    # Where the metrics go besides metrics.jsonl, which is always written: any of tensorboard, wandb,
    # mlflow (the last two are extras: pip install -e ".[wandb]", ".[mlflow]"). Each gets the step metrics,
    # the config, the evaluations with their intervals and the summary; nothing leaves the machine unless
    # WANDB_MODE or MLFLOW_TRACKING_URI says so (README "Experiment trackers").
    trackers: list[Tracker] = field(default_factory=lambda: [Tracker.tensorboard])


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
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
