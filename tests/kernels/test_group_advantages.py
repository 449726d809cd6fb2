"""group_advantages (both backends): formula, zero-variance groups, properties."""

import pytest
import torch
from kernel_inputs import BACKENDS

from lrm_fast.kernels import group_advantages, reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("group_size", [1, 2, 5, 8, 16], ids=lambda g: f"G{g}")
@pytest.mark.parametrize("scale", ["std", "none"])
@pytest.mark.parametrize("rewards_kind", ["binary", "continuous"])
@pytest.mark.parametrize("baseline", ["mean", "leave_one_out"])
def test_group_advantages_match_reference(backend, group_size, scale, rewards_kind, baseline):
    g = torch.Generator().manual_seed(group_size)
    num_groups = 37  # not a multiple of the kernel's tile of groups
    if rewards_kind == "binary":
        rewards = torch.randint(0, 2, (num_groups * group_size,), generator=g).float()
    else:  # RLR-shaped rewards: 0 or 1 + a length bonus
        rewards = torch.randint(0, 2, (num_groups * group_size,), generator=g) * (
            1 + torch.rand(num_groups * group_size, generator=g)
        )
    kwargs = dict(group_size=group_size, scale=scale, baseline=baseline)
    out = group_advantages(rewards, backend=backend, **kwargs)
    expected = reference.group_advantages(rewards.double(), **kwargs)
    assert out.advantages.dtype == torch.float32 and out.zero_variance.dtype == torch.bool
    torch.testing.assert_close(out.advantages, expected.advantages, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.zero_variance, expected.zero_variance)
    groups = out.advantages.view(-1, group_size).double()
    assert groups.mean(1).abs().max().item() <= 1e-5  # group-relative: zero mean, to fp32 precision


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_group(backend):
    """Rewards (1, 0, 0, 0): mean 0.25, unbiased std sqrt(0.25) = 0.5... precisely sqrt(3 / 16 * 4 / 3) = 0.5.

    A = (0.75, -0.25, -0.25, -0.25) / (0.5 + 1e-6).
    """
    out = group_advantages(torch.tensor([1.0, 0, 0, 0]), group_size=4, backend=backend)
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6)
    torch.testing.assert_close(out.advantages, expected)
    out = group_advantages(torch.tensor([1.0, 0, 0, 0]), group_size=4, scale="none", backend=backend)
    torch.testing.assert_close(out.advantages, torch.tensor([0.75, -0.25, -0.25, -0.25]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", ["std", "none"])
def test_leave_one_out_against_the_hand_formula(backend, scale):
    """RLOO: each response against the mean of the group's other G - 1, in float64 by a loop."""
    g = torch.Generator().manual_seed(3)
    rewards = torch.rand(6 * 5, generator=g, dtype=torch.float64).round(decimals=1)
    out = group_advantages(
        rewards.float(), group_size=5, scale=scale, baseline="leave_one_out", backend=backend
    )
    expected = []
    for group in rewards.view(6, 5).tolist():
        std = torch.tensor(group, dtype=torch.float64).std().item()
        for i, r_i in enumerate(group):
            others = group[:i] + group[i + 1 :]
            advantage = r_i - sum(others) / len(others)
            expected.append(advantage / (std + 1e-6) if scale == "std" else advantage)
    expected = torch.tensor(expected, dtype=torch.float64)
    expected[out.zero_variance] = 0.0
    torch.testing.assert_close(out.advantages.double(), expected, rtol=1e-5, atol=1e-6)
    # (1, 0, 0, 0): 1 - 0 = 1 for the correct one, 0 - 1/3 for each wrong one.
    hand = group_advantages(
        torch.tensor([1.0, 0, 0, 0]), group_size=4, scale="none", baseline="leave_one_out", backend=backend
    )
    torch.testing.assert_close(hand.advantages, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("baseline", ["mean", "leave_one_out"])
def test_zero_variance_groups_are_exactly_zero(backend, baseline):
    # 0.1 repeated: its float mean is not exactly 0.1, which must not leak a tiny advantage.
    rewards = torch.tensor([0.1] * 8 + [1.0] * 8 + [0.0] * 8 + [1.0] + [0.0] * 7)
    out = group_advantages(rewards, group_size=8, baseline=baseline, backend=backend)
    assert torch.equal(out.zero_variance, torch.tensor([True] * 24 + [False] * 8))
    assert torch.all(out.advantages[:24] == 0) and torch.isfinite(out.advantages).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("baseline", ["mean", "leave_one_out"])
def test_group_of_one_gives_zero(backend, baseline):
    out = group_advantages(torch.tensor([1.0, 0.0, 0.5]), group_size=1, baseline=baseline, backend=backend)
    assert torch.all(out.advantages == 0) and torch.all(out.zero_variance)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_and_bool_rewards(backend):
    ints = group_advantages(torch.tensor([1, 0, 1, 1]), group_size=4, backend=backend)
    bools = group_advantages(torch.tensor([True, False, True, True]), group_size=4, backend=backend)
    floats = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), group_size=4, backend=backend)
    torch.testing.assert_close(ints.advantages, floats.advantages)
    torch.testing.assert_close(bools.advantages, floats.advantages)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_rewards(backend):
    out = group_advantages(torch.zeros(0), group_size=8, backend=backend)
    assert out.advantages.shape == (0,) and out.zero_variance.shape == (0,)
