"""Per-token GRPO terms with their analytic gradients, shared by the Triton and the chunked torch backends.

Everything here is O(N): once a backend knows each token's log-prob `logp` and entropy `entropy` (one
pass over V), the clipped policy loss, dual clip, k3 KL, entropy bonus, sign masking and aggregation
weights reduce to elementwise math on [N] vectors. The backend then writes the logits gradient in a second
pass over V from two coefficients per token:

    dL/dz_j = dlogp * (1[j == target] - p_j) - dentropy * p_j * (log p_j + H),   z = logits / T

because d logp / dz_j = 1[j == target] - p_j and dH / dz_j = -p_j * (log p_j + H).

Gradient conventions follow torch autograd on `reference.grpo_loss` (the oracle): clamp passes the
gradient at its bounds, so a token is "clipped" only strictly outside [1 - clip_low, 1 + clip_high].
"""

from typing import NamedTuple

import torch

from .reference import KL_CLAMP, KL_LOG_RATIO_CLAMP, LOG_RATIO_CLAMP

STAT_NAMES = ("clip_fraction", "dual_clip_fraction", "approx_kl", "ref_kl", "entropy", "kept_tokens")


class PolicyTerms(NamedTuple):
    loss: torch.Tensor  # [] sum_t weights_t * sign_weight_t * total_t
    dlogp: torch.Tensor  # [N] dL / dlogp_t
    dentropy: torch.Tensor  # [N] dL / dH_t
    stats: dict[str, torch.Tensor]


def policy_terms(
    logp: torch.Tensor,  # [N]
    entropy: torch.Tensor,  # [N]
    old_logprobs: torch.Tensor | None,  # [N]
    advantages: torch.Tensor,  # [N]
    weights: torch.Tensor,  # [N]
    ref_logprobs: torch.Tensor | None,  # [N]
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    positive_weight: float,
    negative_weight: float,
    kl_coef: float,
    entropy_coef: float,
) -> PolicyTerms:
    dtype = logp.dtype
    A = advantages.to(dtype)
    w = weights.to(dtype)
    old = logp if old_logprobs is None else old_logprobs.to(dtype)
    delta = logp - old
    log_ratio = delta.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    # d ratio / d logp: zero where the log-ratio clamp is active.
    dratio = torch.where(delta.abs() <= LOG_RATIO_CLAMP, ratio, 0.0)

    pg_unclipped = -A * ratio
    pg_clipped = -A * ratio.clamp(1 - clip_low, 1 + clip_high)
    is_clipped = pg_clipped > pg_unclipped
    pg = torch.maximum(pg_unclipped, pg_clipped)
    dpg = torch.where(is_clipped, 0.0, -A * dratio)
    is_dual_clipped = torch.zeros_like(is_clipped)
    if dual_clip is not None:
        cap = -A * dual_clip
        is_dual_clipped = (A < 0) & (pg > cap)
        pg = torch.where(is_dual_clipped, cap, pg)
        dpg = torch.where(is_dual_clipped, 0.0, dpg)

    total, dtotal = pg, dpg
    kl = torch.zeros_like(pg)
    if ref_logprobs is not None:
        d_raw = ref_logprobs.to(dtype) - logp
        d = d_raw.clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
        kl_raw = torch.exp(d) - d - 1
        kl = kl_raw.clamp(-KL_CLAMP, KL_CLAMP)
        # dkl / dlogp = -(e^d - 1), zero where either clamp is active.
        live = (d_raw.abs() <= KL_LOG_RATIO_CLAMP) & (kl_raw.abs() <= KL_CLAMP)
        total = total + kl_coef * kl
        dtotal = dtotal + kl_coef * torch.where(live, 1 - torch.exp(d), 0.0)
    total = total - entropy_coef * entropy

    sign_weight = torch.where(A > 0, positive_weight, torch.where(A < 0, negative_weight, 1.0)).to(dtype)
    scale = w * sign_weight
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
    return PolicyTerms(loss, scale * dtotal, -entropy_coef * scale, stats)
