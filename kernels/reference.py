"""Plain-torch references for every op in lrm_fast.kernels: obviously correct, not fast.

Same signatures as the public ops (less `backend` and `inplace`, which are implementation choices).
They materialise every [N, V] intermediate and let autograd produce the gradients, which makes them the
oracle of the tests (run on float64 inputs) and the "naive" provider of the benchmarks. The memory-frugal
torch backend used on CPU is `chunked.py`; the Triton kernels are in the other files of this folder.

Packed layout: N response tokens flattened across sequences, V vocabulary, S sequences.
"""

from typing import NamedTuple

import torch

# exp() of a log-ratio above this overflows nothing in fp32 (e^20 ~ 5e8) and no real update gets near it;
# shared by every backend so that they clamp at the same place.
LOG_RATIO_CLAMP = 20.0
# k3 KL ("low_var_kl"): the estimate is clamped to +-10 as in the study's verl code. The log-ratio clamp
# to +-20 is ours (later verl releases have it too): without it exp(ref - logp) overflows to inf in fp32
# for a token the reference finds ~e^88 times likelier, and the clamped estimate's gradient turns NaN.
KL_LOG_RATIO_CLAMP = 20.0
KL_CLAMP = 10.0


# The group baselines of group_advantages: GRPO's group mean, RLOO's mean of the group's other responses.
BASELINES = ("mean", "leave_one_out")


class GroupAdvantages(NamedTuple):
    advantages: torch.Tensor  # [S] fp32
    zero_variance: torch.Tensor  # [S] bool: every reward of the sequence's group is equal


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    # bf16/fp16 are computed in fp32; fp64 stays fp64 so the reference can serve as a float64 oracle.
    return torch.promote_types(logits.dtype, torch.float32)


def token_logprobs(
    logits: torch.Tensor,  # [N, V]
    targets: torch.Tensor,  # [N] int64
    *,
    temperature: float = 1.0,
) -> torch.Tensor:  # [N] log pi(target | temperature)
    logp_all = torch.log_softmax(logits.to(_compute_dtype(logits)) / temperature, dim=-1)  # [N, V]
    return logp_all.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def group_advantages(
    rewards: torch.Tensor,  # [S], groups of `group_size` consecutive sequences
    *,
    group_size: int,
    scale: str = "std",
    eps: float = 1e-6,
    baseline: str = "mean",
) -> GroupAdvantages:
    r = rewards.to(torch.float64).view(-1, group_size)  # [S / G, G]
    zero_variance = (r == r[:, :1]).all(dim=1, keepdim=True).expand_as(r)  # [S / G, G]
    if baseline == "mean":
        centered = r - r.mean(dim=1, keepdim=True)
    elif baseline == "leave_one_out":  # the mean of the G - 1 others (a group of one has none: A = 0)
        others = (r.sum(dim=1, keepdim=True) - r) / max(group_size - 1, 1)
        centered = r - others
    else:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if scale == "std":
        std = r.std(dim=1, keepdim=True) if group_size > 1 and r.numel() else torch.zeros_like(r[:, :1])
        centered = centered / (std + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    advantages = torch.where(zero_variance, 0.0, centered)
    return GroupAdvantages(advantages.reshape(-1).float(), zero_variance.reshape(-1))


# One piece on purpose (longer than the budget): the oracle reads top to bottom as the math of DESIGN.md.
def grpo_loss(
    logits: torch.Tensor,  # [N, V]
    targets: torch.Tensor,  # [N] int64
    old_logprobs: torch.Tensor | None,  # [N] or None (on-policy)
    advantages: torch.Tensor,  # [N] per token
    weights: torch.Tensor,  # [N] aggregation weights (mask / global normaliser)
    *,
    temperature: float = 1.0,
    objective: str = "clipped",
    ratio_level: str = "token",
    sequence_index: torch.Tensor | None = None,  # [N], runs of equal labels are sequences
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    positive_weight: float = 1.0,
    negative_weight: float = 1.0,
    ref_logprobs: torch.Tensor | None = None,  # [N]
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    dtype = _compute_dtype(logits)
    z = logits.to(dtype) / temperature  # [N, V]
    logp_all = torch.log_softmax(z, dim=-1)  # [N, V]
    logp = logp_all.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # [N]
    probs = logp_all.exp()  # [N, V]
    # -inf logits (masked vocabulary) have p = 0 and contribute 0 to the entropy, not 0 * -inf = NaN.
    entropy = -(probs * torch.where(probs > 0, logp_all, 0.0)).sum(-1)  # [N]

    A = advantages.to(dtype)
    w = weights.to(dtype)
    sign_weight = torch.where(A > 0, positive_weight, torch.where(A < 0, negative_weight, 1.0))
    kept = (w != 0) & (sign_weight != 0)
    old = logp.detach() if old_logprobs is None else old_logprobs.to(dtype)
    log_ratio = torch.clamp(logp - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    token_log_ratio, token_ratio = log_ratio, ratio
    if ratio_level == "sequence":  # GSPO-token: s_i,t = sg(s_i) * pi(t) / sg(pi(t)), verl's form
        _, sequence = torch.unique_consecutive(sequence_index, return_inverse=True)
        seq_log_ratio = _sequence_means((logp - old).detach(), kept, sequence)  # [N], each token's s_i
        log_ratio = torch.clamp(logp - logp.detach() + seq_log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        ratio = torch.exp(log_ratio)
    if objective == "cispo":  # CISPO: the clipped ratio as a constant weight of -A * logp
        pg = -A * torch.clamp(ratio, 1 - clip_low, 1 + clip_high).detach() * logp
        is_clipped = (ratio < 1 - clip_low) | (ratio > 1 + clip_high)
    else:
        pg_unclipped = -A * ratio
        pg_clipped = -A * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
        pg = torch.maximum(pg_unclipped, pg_clipped)
        is_clipped = pg_clipped > pg_unclipped
    is_dual_clipped = torch.zeros_like(is_clipped)
    if dual_clip is not None:
        cap = -A * dual_clip
        is_dual_clipped = (A < 0) & (pg > cap)
        pg = torch.where(A < 0, torch.minimum(pg, cap), pg)

    total = pg
    if ref_logprobs is not None:
        d = torch.clamp(ref_logprobs.to(dtype) - logp, -KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
        kl = torch.clamp(torch.exp(d) - d - 1, -KL_CLAMP, KL_CLAMP)
        total = total + kl_coef * kl
    else:
        kl = torch.zeros_like(pg)
    total = total - entropy_coef * entropy

    loss = (w * sign_weight * total).sum()

    with torch.no_grad():
        n_kept = kept.sum().float()

        def kept_mean(x: torch.Tensor) -> torch.Tensor:
            return (torch.where(kept, x.to(dtype), 0.0).sum() / n_kept.clamp(min=1)).float()

        stats = {
            "clip_fraction": kept_mean(is_clipped),
            "dual_clip_fraction": kept_mean(is_dual_clipped),
            "approx_kl": kept_mean(token_ratio - 1 - token_log_ratio),  # k3 estimate of KL(old || current)
            "ref_kl": kept_mean(kl),
            "entropy": kept_mean(entropy),
            "kept_tokens": n_kept,
        }
        if ratio_level == "sequence":
            stats |= _sequence_stats(ratio.detach(), is_clipped, kept, sequence)
    return loss, stats


def _sequence_means(x: torch.Tensor, kept: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
    """[N] the mean of x over the kept tokens of each token's sequence (0 for a sequence of none)."""
    means = torch.zeros_like(x)
    for i in sequence.unique():
        member = sequence == i
        chosen = member & kept
        means[member] = x[chosen].mean() if chosen.any() else 0.0
    return means


def _sequence_stats(ratio, is_clipped, kept, sequence) -> dict[str, torch.Tensor]:
    """Over the sequences with kept tokens: their ratio's mean, min and max, the share whose clip binds
    (at any kept token), and their count; min and max 0 when there is none."""
    ratios, clipped = [], []
    for i in sequence.unique():
        chosen = (sequence == i) & kept
        if chosen.any():
            ratios.append(ratio[chosen][0])
            clipped.append(is_clipped[chosen].any())
    if not ratios:
        zero = torch.zeros((), dtype=torch.float32)
        return dict.fromkeys(
            ("seq_ratio_mean", "seq_ratio_min", "seq_ratio_max", "seq_clip_fraction"), zero
        ) | {"kept_sequences": zero}
    r, c = torch.stack(ratios), torch.stack(clipped)
    return {
        "seq_ratio_mean": r.mean().float(),
        "seq_ratio_min": r.min().float(),
        "seq_ratio_max": r.max().float(),
        "seq_clip_fraction": c.double().mean().float(),
        "kept_sequences": torch.tensor(float(len(ratios))),
    }
