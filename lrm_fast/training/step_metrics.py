"""A training step's metrics from its counts: means per response, shares per group, the update's
statistics and dynamic sampling's selection (summed over ranks by the trainer before these run).

`step_metric_keys` is the one list of what a step logs (metrics.jsonl, TensorBoard), with the settings
that add keys; the trainer's rows are tested against it. Asynchronous rollouts add a batch's staleness
(`staleness_metrics`) and the update's overlap with sampling (`covered_seconds`).
"""

from typing import TYPE_CHECKING

from lrm_fast.config import TrainConfig
from lrm_fast.config.choices import AdvantageEstimator, RatioLevel, Sampling, Truncated
from lrm_fast.levers.dynamic_sampling import Selection
from lrm_fast.levers.scoring import lever_metrics
from lrm_fast.training.sampler_correction import MISMATCH_SUMS, SamplerCorrection

if TYPE_CHECKING:
    from lrm_fast.training.rollout_worker import Result


def sample_counts(selection: Selection, dynamic: bool, max_new_tokens: int) -> dict[str, float]:
    """This rank's counts of every response sampled in the step (all rounds of dynamic sampling), to be
    summed over ranks: rewards, accuracy, zero-advantage groups (before / after the levers), lengths, the
    truncated responses (those that fill the response window `max_new_tokens`) and lever counts; the
    forwarded and kept counts are the trained groups'. Accuracy, lengths and truncation are the policy's
    own responses (injected ones excluded: injection only ever replaces incorrect responses). Generated
    tokens count every sampled response."""
    scored, trained = selection.sampled, selection.samples
    samples = scored.samples
    sampled = [s for s in samples if not s.injected]
    correct_lengths = [len(s.response_ids) for s in sampled if s.correct]
    wrong_lengths = [len(s.response_ids) for s in sampled if not s.correct]
    before, after = scored.before, scored.after
    return {
        "responses": len(samples),
        "reward": sum(s.reward for s in samples),
        "correct": sum(s.correct for s in sampled),
        "groups": after.groups,
        "all_correct": after.all_correct,
        "all_wrong": after.all_wrong,
        "all_correct_before": before.all_correct,
        "all_wrong_before": before.all_wrong,
        "n_correct": len(correct_lengths),
        "len_correct": sum(correct_lengths),
        "n_wrong": len(wrong_lengths),
        "len_wrong": sum(wrong_lengths),
        "truncated": sum(len(s.response_ids) >= max_new_tokens for s in sampled),
        "forwarded": sum(s.forward for s in trained),
        "kept": sum(s.regime_weight > 0 for s in trained),
        "injected": scored.injected,
        "shaped_groups": scored.shaped_groups,
        "generated_tokens": selection.generated_tokens,
        **scored.counts,
        **(selection_counts(selection) if dynamic else {}),
    }


def sample_metrics(totals: dict[str, float], rounds: int, generated_total: int) -> dict[str, float]:
    """The step's response metrics from `sample_counts` summed over ranks, and the run's generated tokens
    so far."""
    tokens = {
        "rollout/generated_tokens": totals["generated_tokens"],
        "rollout/generated_tokens_total": float(generated_total),
    }
    sampling = sampling_metrics(totals, rounds) if "kept_groups" in totals else {}
    return {**shares(totals), **lever_metrics(totals), **tokens, **sampling}


def update_metrics(update, lr: float) -> dict[str, float]:
    return {
        "loss/policy": update.loss,
        "loss/clip_fraction": update.stats["clip_fraction"],
        "loss/dual_clip_fraction": update.stats["dual_clip_fraction"],
        "loss/approx_kl": update.stats["approx_kl"],
        "loss/ref_kl": update.stats["ref_kl"],
        "loss/entropy": update.stats["entropy"],
        "loss/kept_tokens": update.stats["kept_tokens"],
        "optim/grad_norm": update.grad_norm,
        "optim/skipped": float(update.skipped),
        "optim/steps": float(update.steps),
        "optim/lr": lr,
        # Sampler vs trainer log-probs (rollout.log_mismatch / tis_cap); absent when not measured.
        **{f"rollout/{k}": update.stats[k] for k in MISMATCH_SUMS[:-1] if k in update.stats},
        # loss.ratio_level=sequence: the sequence ratios (GSPO).
        **{f"loss/{k}": update.stats[k] for k in SEQUENCE_STATS if k in update.stats},
    }


def selection_counts(selection: Selection) -> dict[str, float]:
    return {
        "prompts": selection.prompts,
        "informative": selection.informative,
        "kept_groups": selection.kept,
        "padded_groups": selection.padded,
    }


def sampling_metrics(t: dict[str, float], rounds: int) -> dict[str, float]:
    """Dynamic sampling's rounds (every rank runs the same ones) and its groups, summed over ranks."""
    return {
        "sampling/rounds": float(rounds),
        "sampling/prompts": t["prompts"],
        "sampling/informative_groups": t["informative"],
        "sampling/kept_groups": t["kept_groups"],
        "sampling/padded_groups": t["padded_groups"],
        "sampling/prompts_per_kept_group": t["prompts"] / max(t["kept_groups"], 1.0),
    }


def shares(t: dict[str, float]) -> dict[str, float]:
    """The step's metrics from its counts summed over ranks: means per response, shares per group."""
    n, groups = t["responses"], t["groups"]
    return {
        "reward/mean": t["reward"] / n,
        "reward/accuracy": t["correct"] / n,
        "zero_adv/ratio": (t["all_correct"] + t["all_wrong"]) / groups,
        "zero_adv/all_correct": t["all_correct"] / groups,
        "zero_adv/all_wrong": t["all_wrong"] / groups,
        "zero_adv/ratio_before": (t["all_correct_before"] + t["all_wrong_before"]) / groups,
        "zero_adv/all_correct_before": t["all_correct_before"] / groups,
        "zero_adv/all_wrong_before": t["all_wrong_before"] / groups,
        "length/response_mean": (t["len_correct"] + t["len_wrong"]) / max(n - t["injected"], 1),
        "length/correct_mean": t["len_correct"] / max(t["n_correct"], 1),
        "length/incorrect_mean": t["len_wrong"] / max(t["n_wrong"], 1),
        "length/truncated_ratio": t["truncated"] / max(n - t["injected"], 1),
        "batch/forwarded_responses": t["forwarded"],
        "regime/kept_responses": t["kept"],
        "injection/responses": t["injected"],
        "reward/rlr_shaped_groups": t["shaped_groups"],
    }


# Every row of a trained step (before the levers, after them, the update and its timing).
STEP_KEYS = (
    "reward/mean",
    "reward/accuracy",
    "zero_adv/ratio",
    "zero_adv/all_correct",
    "zero_adv/all_wrong",
    "zero_adv/ratio_before",
    "zero_adv/all_correct_before",
    "zero_adv/all_wrong_before",
    "length/response_mean",
    "length/correct_mean",
    "length/incorrect_mean",
    "length/truncated_ratio",
    "batch/forwarded_responses",
    "regime/kept_responses",
    "regime/negative_only",
    "injection/responses",
    "reward/rlr_shaped_groups",
    "rollout/generated_tokens",
    "rollout/generated_tokens_total",
    "loss/policy",
    "loss/clip_fraction",
    "loss/dual_clip_fraction",
    "loss/approx_kl",
    "loss/ref_kl",
    "loss/entropy",
    "loss/kept_tokens",
    "optim/grad_norm",
    "optim/skipped",
    "optim/steps",
    "optim/lr",
    "time/rollout_s",
    "time/reward_s",
    "time/update_s",
    "time/weight_sync_s",
    "time/step_s",
    "perf/tokens_per_s",
)
# A step skipped before its update (its batch met non-finite logits: the guard rolled back).
SKIPPED_STEP_KEYS = ("optim/skipped", "optim/steps", "optim/lr", "time/rollout_s", "time/reward_s")
SAMPLING_KEYS = tuple(f"sampling/{k}" for k in (
    "rounds", "prompts", "informative_groups", "kept_groups", "padded_groups", "prompts_per_kept_group"
))  # fmt: skip
ASYNC_KEYS = ("async/overlap_s", "async/staleness", "async/sampling_s", "async/push_bytes", "async/push_s")
# Partial rollouts (rollout.partial_steps): the tokens sampled with newer weights than their batch's first,
# and the mean staleness of a token (optimizer steps), against async/staleness, the batch's oldest token's.
PARTIAL_KEYS = ("async/fresher_tokens", "async/token_staleness")
# The sampler / trainer mismatch (rollout.log_mismatch, rollout.tis_cap, asynchronous rollouts): present
# when a step forwarded at least one sampled token (injected tokens have no sampler log-prob).
MISMATCH_KEYS = tuple(f"rollout/{k}" for k in MISMATCH_SUMS[:-1])
EVAL_KEYS = ("eval/accuracy",)  # rows of their own, at eval.every steps
SEQUENCE_STATS = ("seq_ratio_mean", "seq_ratio_min", "seq_ratio_max", "seq_clip_fraction", "kept_sequences")


def step_metric_keys(cfg: TrainConfig, asynchronous: bool) -> tuple[frozenset[str], frozenset[str]]:
    """(always, measured): the keys every trained step of a run with `cfg` logs, and those it logs when
    there was something to measure (the mismatch)."""
    reward = cfg.reward
    levers = {
        "reward/repetition_penalty": reward.repetition_penalty != 0,
        "reward/repetition_penalised": reward.repetition_penalty != 0,
        "reward/truncation_masked": reward.truncated != Truncated.keep,
        "reward/overlong_penalty": reward.overlong_buffer > 0,
        "reward/overlong_penalised": reward.overlong_buffer > 0,
        "reward/kl_penalty": reward.kl_coef > 0,
        "advantage/batch_std": cfg.loss.advantage_estimator == AdvantageEstimator.reinforce_pp,
    }
    if RatioLevel(cfg.loss.ratio_level) == RatioLevel.sequence:
        levers |= {f"loss/{k}": True for k in SEQUENCE_STATS}
    always = {*STEP_KEYS, *(key for key, on in levers.items() if on)}
    if cfg.sampling.name == Sampling.dynamic:
        always |= set(SAMPLING_KEYS)
    if asynchronous:
        always |= set(ASYNC_KEYS) | (set(PARTIAL_KEYS) if cfg.rollout.partial_steps else set())
    mismatch = cfg.rollout.log_mismatch or SamplerCorrection.of(cfg.rollout, asynchronous).applied
    measured = set(MISMATCH_KEYS) if mismatch else set()
    return frozenset(always), frozenset(measured)


def staleness_metrics(result: "Result", optimizer_steps: int, cfg: TrainConfig) -> dict[str, float]:
    """The staleness in optimizer steps of a batch about to be trained after `optimizer_steps` of them: its
    oldest token's (the request's weights), and under partial rollouts the share of tokens sampled with
    newer weights and the mean token's. Raises if any token is older than trainer.max_staleness: the
    schedule guarantees it, and a broken one must not train."""
    token_steps = result.token_steps or {result.steps: 1}
    tokens = sum(token_steps.values())
    staleness = {optimizer_steps - steps: count for steps, count in token_steps.items()}
    if max(staleness) > cfg.trainer.max_staleness:
        raise RuntimeError(
            f"batch {result.index} has tokens {max(staleness)} optimizer steps old "
            f"(max {cfg.trainer.max_staleness})"
        )
    oldest = optimizer_steps - result.steps
    metrics = {"async/staleness": float(oldest)}
    if cfg.rollout.partial_steps:
        metrics["async/fresher_tokens"] = sum(c for s, c in staleness.items() if s < oldest) / max(tokens, 1)
        metrics["async/token_staleness"] = sum(s * c for s, c in staleness.items()) / max(tokens, 1)
    return metrics


def covered_seconds(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end] inside the union of `spans`."""
    covered, reach = 0.0, start
    for a, b in sorted(spans):
        a, b = max(a, reach), min(b, end)
        if b > a:
            covered += b - a
            reach = b
    return covered
