"""A training step's metrics from its counts: means per response, shares per group, the update's
statistics and dynamic sampling's selection (summed over ranks by the trainer before these run)."""

from lrm_fast.levers.dynamic_sampling import Selection
from lrm_fast.training.update import MISMATCH_SUMS


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
        "batch/forwarded_responses": t["forwarded"],
        "regime/kept_responses": t["kept"],
        "injection/responses": t["injected"],
        "reward/rlr_shaped_groups": t["shaped_groups"],
    }
