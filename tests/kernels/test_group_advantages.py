"""group_advantages (both backends): formula, zero-variance groups, properties."""

import pytest
import torch
from kernel_inputs import BACKENDS

from lrm_fast.kernels import group_advantages, reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("group_size", [1, 2, 5, 8, 16], ids=lambda g: f"G{g}")
@pytest.mark.parametrize("scale", ["std", "none"])
@pytest.mark.parametrize("rewards_kind", ["binary", "continuous"])
def test_group_advantages_match_reference(backend, group_size, scale, rewards_kind):
    g = torch.Generator().manual_seed(group_size)
    num_groups = 37  # not a multiple of the kernel's tile of groups
    if rewards_kind == "binary":
        rewards = torch.randint(0, 2, (num_groups * group_size,), generator=g).float()
    else:  # RLR-shaped rewards: 0 or 1 + a length bonus
        rewards = torch.randint(0, 2, (num_groups * group_size,), generator=g) * (
            1 + torch.rand(num_groups * group_size, generator=g)
        )
    out = group_advantages(rewards, group_size=group_size, scale=scale, backend=backend)
    expected = reference.group_advantages(rewards.double(), group_size=group_size, scale=scale)
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
def test_zero_variance_groups_are_exactly_zero(backend):
    # 0.1 repeated: its float mean is not exactly 0.1, which must not leak a tiny advantage.
    rewards = torch.tensor([0.1] * 8 + [1.0] * 8 + [0.0] * 8 + [1.0] + [0.0] * 7)
    out = group_advantages(rewards, group_size=8, backend=backend)
    assert torch.equal(out.zero_variance, torch.tensor([True] * 24 + [False] * 8))
    assert torch.all(out.advantages[:24] == 0) and torch.isfinite(out.advantages).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_of_one_gives_zero(backend):
    out = group_advantages(torch.tensor([1.0, 0.0, 0.5]), group_size=1, backend=backend)
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
