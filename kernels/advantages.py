"""group_advantages: GRPO's group-relative advantage and the zero-variance flag of each sequence.

For a group g of G consecutive sequences with rewards r, the baseline b_i and the scale:

    b_i = mean_g(r)                                baseline="mean" (GRPO)
    b_i = mean_{j in g, j != i} r_j                baseline="leave_one_out" (RLOO, arXiv 2402.14740)
        = mean_g(r) - (r_i - mean_g(r)) / (G - 1), so r_i - b_i = G / (G - 1) * (r_i - mean_g(r))
    A_i = (r_i - b_i) / (std_g(r) + eps)           scale="std", unbiased std (n - 1)
    A_i =  r_i - b_i                               scale="none" (Dr. GRPO; RLOO)
    zero_variance_i = all rewards of g are equal;  then A_i = 0 exactly (also for a group of 1, which
                                                   has no leave-one-out baseline)

One program normalises a tile of groups held in registers: reads S rewards, writes S fp32 + S bytes.
Advantages are constants of the policy gradient (rewards come from a verifier), so the result carries
no gradient on either backend.
"""

import torch
import triton
import triton.language as tl

from . import reference
from .checks import resolve_backend
from .reference import GroupAdvantages


@triton.jit
def _group_advantages_kernel(
    # data
    rewards_ptr,  # [S] float
    advantages_ptr,  # [S] fp32 out
    zero_variance_ptr,  # [S] int8 out
    # shapes
    num_groups,
    # scalars
    eps,
    # constexprs
    GROUP: tl.constexpr,
    DOF: tl.constexpr,  # GROUP - 1 (unbiased std), or 1 for a group of one, whose advantage is 0 anyway
    GROUP_PAD: tl.constexpr,
    BLOCK_GROUPS: tl.constexpr,
    SCALE_STD: tl.constexpr,
    LEAVE_ONE_OUT: tl.constexpr,
):
    g = tl.program_id(0) * BLOCK_GROUPS + tl.arange(0, BLOCK_GROUPS)[:, None]
    j = tl.arange(0, GROUP_PAD)[None, :]
    mask = (g < num_groups) & (j < GROUP)
    offs = g.to(tl.int64) * GROUP + j
    r = tl.load(rewards_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(r, axis=1) / GROUP
    centered = tl.where(mask, r - mean[:, None], 0.0)
    # Exact equality, not a variance threshold: "all rewards equal" is what makes a group gradient-free.
    zero_variance = tl.max(tl.where(mask, r, float("-inf")), axis=1) == tl.min(
        tl.where(mask, r, float("inf")), axis=1
    )
    advantages = centered
    if LEAVE_ONE_OUT:
        advantages = centered * (GROUP / DOF)
    if SCALE_STD:
        var = tl.sum(centered * centered, axis=1) / DOF
        advantages = advantages / (tl.sqrt(var)[:, None] + eps)
    advantages = tl.where(zero_variance[:, None], 0.0, advantages)
    tl.store(advantages_ptr + offs, advantages, mask=mask)
    tl.store(zero_variance_ptr + offs, (zero_variance[:, None] & mask).to(tl.int8), mask=mask)


def group_advantages_fwd(
    rewards: torch.Tensor, group_size: int, scale: str, eps: float, baseline: str
) -> GroupAdvantages:
    advantages = torch.empty(rewards.shape[0], dtype=torch.float32, device=rewards.device)
    zero_variance = torch.empty(rewards.shape[0], dtype=torch.int8, device=rewards.device)
    num_groups = rewards.shape[0] // group_size
    group_pad = triton.next_power_of_2(group_size)
    block_groups = max(1, min(triton.next_power_of_2(num_groups), 4096 // group_pad))
    if num_groups:
        _group_advantages_kernel[(triton.cdiv(num_groups, block_groups),)](
            rewards_ptr=rewards,
            advantages_ptr=advantages,
            zero_variance_ptr=zero_variance,
            num_groups=num_groups,
            eps=eps,
            GROUP=group_size,
            DOF=max(group_size - 1, 1),
            GROUP_PAD=group_pad,
            BLOCK_GROUPS=block_groups,
            SCALE_STD=scale == "std",
            LEAVE_ONE_OUT=baseline == "leave_one_out",
        )
    return GroupAdvantages(advantages, zero_variance.view(torch.bool))


def group_advantages(
    rewards: torch.Tensor,
    *,
    group_size: int,
    scale: str = "std",
    eps: float = 1e-6,
    baseline: str = "mean",
    backend: str = "auto",
) -> GroupAdvantages:
    """Group-relative advantages of S sequences in S / group_size consecutive groups.

    Args:
        rewards: [S] real rewards (bool and integer rewards are read as 0/1 and integers).
        group_size: G, responses per prompt; S must be a multiple of it.
        scale: "std" (GRPO) or "none" (Dr. GRPO: centring only).
        eps: added to the std, as in the study's code (1e-6).
        baseline: "mean" (GRPO: the group's mean) or "leave_one_out" (RLOO: the mean of the others).
        backend: "auto" (triton for CUDA tensors, torch otherwise), "triton" or "torch".

    Returns:
        GroupAdvantages(advantages [S] fp32, zero_variance [S] bool), neither differentiable.
    """
    backend = resolve_backend(backend, rewards)
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D [S] tensor, got {getattr(rewards, 'shape', type(rewards))}")
    if rewards.dtype.is_complex:
        raise ValueError(f"rewards must be real, got {rewards.dtype}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if rewards.shape[0] % group_size:
        raise ValueError(f"rewards has {rewards.shape[0]} entries, not a multiple of group_size={group_size}")
    if scale not in ("std", "none"):
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if baseline not in reference.BASELINES:
        raise ValueError(f"baseline must be one of {reference.BASELINES}, got {baseline!r}")
    rewards = rewards.detach()
    if backend == "torch":
        return reference.group_advantages(
            rewards, group_size=group_size, scale=scale, eps=eps, baseline=baseline
        )
    if not rewards.dtype.is_floating_point:
        rewards = rewards.float()
    return group_advantages_fwd(rewards.contiguous(), group_size, scale, eps, baseline)
