"""Per-token GRPO terms with their analytic gradients, shared by the Triton and the chunked torch backends.

Everything here is O(N): once a backend knows each token's log-prob `logp` and entropy `entropy` (one
pass over V), the policy loss (PPO's clipped ratio with its dual clip, or CISPO's clipped weight), k3 KL,
entropy bonus, sign masking and aggregation weights reduce to elementwise math on [N] vectors. The
backend then writes the logits gradient in a second pass over V from two coefficients per token:

    dL/dz_j = dlogp * (1[j == target] - p_j) - dentropy * p_j * (log p_j + H),   z = logits / T

because d logp / dz_j = 1[j == target] - p_j and dH / dz_j = -p_j * (log p_j + H).

Gradient conventions follow torch autograd on `reference.grpo_loss` (the oracle): clamp passes the
gradient at its bounds, so a token is "clipped" only strictly outside [1 - clip_low, 1 + clip_high].

Also here, shared by every backend of both loss ops: `LossOptions`, the loss's scalar options as one
checked value, and `take_stored_grads`, the one guard for gradients that backward scales in place.
"""

import dataclasses
from typing import NamedTuple

import torch

from .checks import check_positive
from .reference import KL_CLAMP, KL_LOG_RATIO_CLAMP, LOG_RATIO_CLAMP

STAT_NAMES = ("clip_fraction", "dual_clip_fraction", "approx_kl", "ref_kl", "entropy", "kept_tokens")
# The policy loss of each token, with rho = exp(logp - old) and the bounds [1 - clip_low, 1 + clip_high]:
#   clipped  max(-A rho, -A clip(rho)): PPO's, whose gradient is 0 where the clip binds
#   cispo    -sg(clip(rho)) A logp: CISPO's (MiniMax-M1, arXiv 2506.13585), every token keeps its gradient
OBJECTIVES = ("clipped", "cispo")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossOptions:
    """The scalar options of grpo_loss and grpo_loss_from_hidden (meanings in grpo_loss's docstring).

    Built once by the public op: the constructor raises ValueError naming a bad option and stores every
    value as a Python float. No defaults here: the public functions' signatures hold the only ones.
    """

    temperature: float
    objective: str
    clip_low: float
    clip_high: float
    dual_clip: float | None
    positive_weight: float
    negative_weight: float
    kl_coef: float
    entropy_coef: float

    def __post_init__(self):
        check_positive("temperature", self.temperature)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("clip_low", "clip_high", "kl_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.objective == "clipped" and self.clip_low >= 1:
            raise ValueError(
                f"clip_low must be < 1 (the ratio's lower bound is 1 - clip_low), got {self.clip_low}"
            )
        if self.objective == "cispo" and self.clip_low > 1:  # 1: no lower bound, as CISPO's paper runs
            raise ValueError(f"clip_low must be <= 1 with objective='cispo', got {self.clip_low}")
        if self.dual_clip is not None and not self.dual_clip > 1:
            raise ValueError(f"dual_clip must be > 1 (or None), got {self.dual_clip}")
        if self.dual_clip is not None and self.objective == "cispo":
            raise ValueError("dual_clip caps PPO's clipped loss; objective='cispo' has none (set it None)")
        for name in ("positive_weight", "negative_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 (0 drops those tokens), got {getattr(self, name)}")
        # Python floats, whatever came in (ints, numpy scalars, 0-dim tensors): the custom ops' schemas take
        # floats, and torch.compile specialises on them as constants instead of tracing tensors.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and field.name != "objective":
                object.__setattr__(self, field.name, float(value))


class PolicyTerms(NamedTuple):
    loss: torch.Tensor  # [] sum_t weights_t * sign_weight_t * total_t
    dlogp: torch.Tensor  # [N] dL / dlogp_t
    dentropy: torch.Tensor  # [N] dL / dH_t
    stats: dict[str, torch.Tensor]


# Over the size budget by its per-argument shape notes and the three terms (clipped loss, KL, entropy)
# assembled in one place, as the reference reads them.
def policy_terms(
    logp: torch.Tensor,  # [N]
    entropy: torch.Tensor,  # [N]
    old_logprobs: torch.Tensor | None,  # [N]
    advantages: torch.Tensor,  # [N]
    weights: torch.Tensor,  # [N]
    ref_logprobs: torch.Tensor | None,  # [N]
    options: LossOptions,
) -> PolicyTerms:
    """The loss, its per-token gradient coefficients and the stats from [N] vectors (temperature unused:
    the backend has already applied it to logp and entropy)."""
    dtype = logp.dtype
    A = advantages.to(dtype)
    w = weights.to(dtype)
    old = logp if old_logprobs is None else old_logprobs.to(dtype)
    policy_loss = _cispo_policy_loss if options.objective == "cispo" else _clipped_policy_loss
    pg, dpg, ratio, log_ratio, is_clipped, is_dual_clipped = policy_loss(A, logp, old, options)

    total, dtotal = pg, dpg
    kl = torch.zeros_like(pg)
    if ref_logprobs is not None:
        kl, dkl = _k3_kl(ref_logprobs.to(dtype), logp)
        total = total + options.kl_coef * kl
        dtotal = dtotal + options.kl_coef * dkl
    total = total - options.entropy_coef * entropy

    sign_weight = torch.where(
        A > 0, options.positive_weight, torch.where(A < 0, options.negative_weight, 1.0)
    )
    scale = w * sign_weight.to(dtype)
    loss = (scale * total).sum()

    kept = scale != 0
    n_kept = kept.sum().float()

    def kept_mean(x: torch.Tensor) -> torch.Tensor:
        return (torch.where(kept, x.to(dtype), 0.0).sum() / n_kept.clamp(min=1)).float()

    stats = {
        "clip_fraction": kept_mean(is_clipped),
        "dual_clip_fraction": kept_mean(is_dual_clipped),
        "approx_kl": kept_mean(ratio - 1 - log_ratio),  # k3 estimate of KL(old || current)
        "ref_kl": kept_mean(kl),
        "entropy": kept_mean(entropy),
        "kept_tokens": n_kept,
    }
    # A token with zero scale gets exactly zero coefficients, so its gradient row is exactly zero.
    return PolicyTerms(loss, scale * dtotal, -options.entropy_coef * scale, stats)


def _clipped_policy_loss(A, logp, old, options: LossOptions):
    """Per token: the clipped (and dual-clipped) policy loss and its d/dlogp, the ratio and its log, and
    the two clip flags."""
    delta = logp - old
    log_ratio = delta.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    # d ratio / d logp: zero where the log-ratio clamp is active.
    dratio = torch.where(delta.abs() <= LOG_RATIO_CLAMP, ratio, 0.0)

    pg_unclipped = -A * ratio
    pg_clipped = -A * ratio.clamp(1 - options.clip_low, 1 + options.clip_high)
    is_clipped = pg_clipped > pg_unclipped
    pg = torch.maximum(pg_unclipped, pg_clipped)
    dpg = torch.where(is_clipped, 0.0, -A * dratio)
    is_dual_clipped = torch.zeros_like(is_clipped)
    if options.dual_clip is not None:
        cap = -A * options.dual_clip
        is_dual_clipped = (A < 0) & (pg > cap)
        pg = torch.where(is_dual_clipped, cap, pg)
        dpg = torch.where(is_dual_clipped, 0.0, dpg)
    return pg, dpg, ratio, log_ratio, is_clipped, is_dual_clipped


def _cispo_policy_loss(A, logp, old, options: LossOptions):
    """Per token: CISPO's loss -sg(clip(rho)) * A * logp and its d/dlogp, -clip(rho) * A (the weight is
    detached, so a clipped token keeps its gradient, scaled), the ratio and its log, and the clip flag
    (the weight strictly outside its bounds; there is no dual clip)."""
    log_ratio = (logp - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    low, high = 1 - options.clip_low, 1 + options.clip_high
    weight = ratio.clamp(low, high)
    is_clipped = (ratio < low) | (ratio > high)
    return -A * weight * logp, -A * weight, ratio, log_ratio, is_clipped, torch.zeros_like(is_clipped)


def _k3_kl(ref_logp: torch.Tensor, logp: torch.Tensor):
    """Per token: the clamped k3 KL estimate to the reference policy, and its d/dlogp."""
    d_raw = ref_logp - logp
    d = d_raw.clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
    kl_raw = torch.exp(d) - d - 1
    kl = kl_raw.clamp(-KL_CLAMP, KL_CLAMP)
    # dkl / dlogp = -(e^d - 1), zero where either clamp is active.
    live = (d_raw.abs() <= KL_LOG_RATIO_CLAMP) & (kl_raw.abs() <= KL_CLAMP)
    return kl, torch.where(live, 1 - torch.exp(d), 0.0)


def take_stored_grads(ctx, op: str) -> tuple:
    """The gradients a loss's forward stored on `ctx` (as `ctx.stored_grads`), handed out once.

    Backward scales them in place by grad_output instead of allocating new ones, so a second backward
    (retain_graph=True) would return them scaled twice: it raises instead.
    """
    if ctx.stored_grads is None:
        raise RuntimeError(f"{op}: backward ran twice; its stored gradient was scaled in place by the first")
    grads, ctx.stored_grads = ctx.stored_grads, None
    return grads
