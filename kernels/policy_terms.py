"""Per-token GRPO terms with their analytic gradients, shared by the Triton and the chunked torch backends.

Everything here is O(N): once a backend knows each token's log-prob `logp` and entropy `entropy` (one
pass over V), the policy loss (PPO's clipped ratio with its dual clip, or CISPO's clipped weight), k3 KL,
entropy bonus, sign masking and aggregation weights reduce to elementwise math on [N] vectors; GSPO's
sequence ratio adds one segment sum over them. The backend then writes the logits gradient in a second
pass over V from two coefficients per token:

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
# With ratio_level="sequence", over the sequences with kept tokens: their ratios' mean, min and max, the
# share whose clip binds, and their count (min and max are 0 when there is none).
SEQUENCE_STAT_NAMES = (
    "seq_ratio_mean",
    "seq_ratio_min",
    "seq_ratio_max",
    "seq_clip_fraction",
    "kept_sequences",
)
# The policy loss of each token, with rho = exp(logp - old) and the bounds [1 - clip_low, 1 + clip_high]:
#   clipped  max(-A rho, -A clip(rho)): PPO's, whose gradient is 0 where the clip binds
#   cispo    -sg(clip(rho)) A logp: CISPO's (MiniMax-M1, arXiv 2506.13585), every token keeps its gradient
OBJECTIVES = ("clipped", "cispo")
# What the clipped loss's ratio measures:
#   token     rho_t = pi(t) / pi_old(t), each token's own (PPO, GRPO)
#   sequence  s_i = exp(mean_{t in i} log(pi(t) / pi_old(t))) over the kept tokens of sequence i, the
#             geometric mean, given to every token of i and clipped per sequence: GSPO (arXiv 2507.18071).
#             Its gradient is GSPO-token's, s_i,t = sg(s_i) * pi(t) / sg(pi(t)) (verl's compute_policy_loss_
#             gspo): d pg_t / d logp_t = -A s_i where the clip does not bind, so each token's gradient
#             carries its own weight. That equals GSPO's sequence gradient, d(-A s_i)/d logp_t summed over
#             the weights of i, whenever the weights are constant over each sequence's kept tokens, as
#             every aggregation of the trainer makes them. A token-level rollout correction multiplies
#             each token's weight by its own factor; then each token's gradient carries it, as in verl
#             (its rollout_is_weights times the GSPO token losses), not GSPO's sequence gradient.
RATIO_LEVELS = ("token", "sequence")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossOptions:
    """The scalar options of grpo_loss and grpo_loss_from_hidden (meanings in grpo_loss's docstring).

    Built once by the public op: the constructor raises ValueError naming a bad option and stores every
    value as a Python float. No defaults here: the public functions' signatures hold the only ones.
    """

    temperature: float
    objective: str
    ratio_level: str
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
        if self.ratio_level not in RATIO_LEVELS:
            raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {self.ratio_level!r}")
        if self.ratio_level == "sequence" and self.objective != "clipped":
            raise ValueError("ratio_level='sequence' is GSPO's clipped loss; objective='cispo' weighs tokens")
        if self.ratio_level == "sequence" and self.dual_clip is not None:
            raise ValueError("dual_clip caps PPO's token loss; ratio_level='sequence' (GSPO) has none")
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
            if value is not None and field.name not in ("objective", "ratio_level"):
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
    sequence_index: torch.Tensor | None = None,  # [N], needed with ratio_level="sequence"
) -> PolicyTerms:
    """The loss, its per-token gradient coefficients and the stats from [N] vectors (temperature unused:
    the backend has already applied it to logp and entropy)."""
    dtype = logp.dtype
    A = advantages.to(dtype)
    w = weights.to(dtype)
    old = logp if old_logprobs is None else old_logprobs.to(dtype)
    sign_weight = torch.where(
        A > 0, options.positive_weight, torch.where(A < 0, options.negative_weight, 1.0)
    )
    scale = w * sign_weight.to(dtype)
    kept = scale != 0
    token_log_ratio = logp - old
    sequences = None
    if options.ratio_level == "sequence":
        sequences = segments(sequence_index, len(logp))
        means, _ = segment_means(token_log_ratio, kept, sequences)
        delta = means[sequences]
    else:
        delta = token_log_ratio
    policy_loss = _cispo_policy_loss if options.objective == "cispo" else _clipped_policy_loss
    pg, dpg, is_clipped, is_dual_clipped = policy_loss(A, logp, delta, options)

    total, dtotal = pg, dpg
    kl = torch.zeros_like(pg)
    if ref_logprobs is not None:
        kl, dkl = _k3_kl(ref_logprobs.to(dtype), logp)
        total = total + options.kl_coef * kl
        dtotal = dtotal + options.kl_coef * dkl
    total = total - options.entropy_coef * entropy
    loss = (scale * total).sum()

    n_kept = kept.sum().float()

    def kept_mean(x: torch.Tensor) -> torch.Tensor:
        return (torch.where(kept, x.to(dtype), 0.0).sum() / n_kept.clamp(min=1)).float()

    log_ratio = token_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    stats = {
        "clip_fraction": kept_mean(is_clipped),
        "dual_clip_fraction": kept_mean(is_dual_clipped),
        "approx_kl": kept_mean(log_ratio.exp() - 1 - log_ratio),  # k3 estimate of KL(old || current)
        "ref_kl": kept_mean(kl),
        "entropy": kept_mean(entropy),
        "kept_tokens": n_kept,
    }
    if sequences is not None:
        stats |= _sequence_stats(delta, is_clipped, kept, sequences)
    # A token with zero scale gets exactly zero coefficients, so its gradient row is exactly zero.
    return PolicyTerms(loss, scale * dtotal, -options.entropy_coef * scale, stats)


def stat_names(options: LossOptions) -> tuple[str, ...]:
    """The stats a loss with these options reports, in the order the backends stack them."""
    return STAT_NAMES + (SEQUENCE_STAT_NAMES if options.ratio_level == "sequence" else ())


def segments(sequence_index: torch.Tensor | None, n: int) -> torch.Tensor:
    """[N] int64 in [0, N): the run of equal consecutive `sequence_index` values each token is in, numbered
    from 0. One O(N) pass and no host sync, whatever the labels (rows when padded, packed sequences)."""
    if sequence_index is None:
        raise ValueError("ratio_level='sequence' needs sequence_index, each token's sequence")
    if len(sequence_index) != n:
        raise ValueError(f"sequence_index must have shape [{n}], got {list(sequence_index.shape)}")
    starts = torch.ones_like(sequence_index, dtype=torch.long)
    starts[1:] = (sequence_index[1:] != sequence_index[:-1]).long()
    return starts.cumsum(0) - 1


def segment_means(x: torch.Tensor, kept: torch.Tensor, sequences: torch.Tensor):
    """([N] mean of x over each segment's kept tokens (0 where none), [N] kept count), by segment sums;
    entries past the last segment are empty."""
    sums = x.new_zeros(len(x)).index_add_(0, sequences, torch.where(kept, x, 0.0))
    counts = x.new_zeros(len(x)).index_add_(0, sequences, kept.to(x.dtype))
    return sums / counts.clamp(min=1), counts


def _sequence_stats(delta, is_clipped, kept, sequences) -> dict[str, torch.Tensor]:
    """SEQUENCE_STAT_NAMES over the sequences with kept tokens; `delta` is each token's sequence log-ratio."""
    log_s, counts = segment_means(delta, kept, sequences)
    clipped, _ = segment_means(is_clipped.to(delta.dtype), kept, sequences)
    live = counts > 0
    n = live.sum()
    s = log_s.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    empty = n == 0
    sentinel = s.new_ones(1)  # keeps min and max defined over no tokens at all

    def extreme(fill: float, reduce) -> torch.Tensor:
        return torch.where(empty, 0.0, reduce(torch.cat([torch.where(live, s, fill), sentinel * fill])))

    return {
        "seq_ratio_mean": (torch.where(live, s, 0.0).sum() / n.clamp(min=1)).float(),
        "seq_ratio_min": extreme(torch.inf, torch.min).float(),
        "seq_ratio_max": extreme(-torch.inf, torch.max).float(),
        "seq_clip_fraction": (torch.where(live, clipped > 0, False).sum() / n.clamp(min=1)).float(),
        "kept_sequences": n.float(),
    }


def _clipped_policy_loss(A, logp, delta, options: LossOptions):
    """Per token: the clipped (and dual-clipped) policy loss and its d/dlogp, and the two clip flags.

    `delta` is the log-ratio, the token's own or its sequence's; d ratio / d logp_t = ratio either way
    (GSPO-token's detached sequence ratio times pi(t) / sg(pi(t)))."""
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
    return pg, dpg, is_clipped, is_dual_clipped


def _cispo_policy_loss(A, logp, delta, options: LossOptions):
    """Per token: CISPO's loss -sg(clip(rho)) * A * logp and its d/dlogp, -clip(rho) * A (the weight is
    detached, so a clipped token keeps its gradient, scaled), and the clip flag (the weight strictly
    outside its bounds; there is no dual clip)."""
    ratio = torch.exp(delta.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    low, high = 1 - options.clip_low, 1 + options.clip_high
    weight = ratio.clamp(low, high)
    is_clipped = (ratio < low) | (ratio > high)
    return -A * weight * logp, -A * weight, is_clipped, torch.zeros_like(is_clipped)


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
