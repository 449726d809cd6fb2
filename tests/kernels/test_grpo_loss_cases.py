"""Hand-computed grpo_loss cases that pin the clip boundaries, the dual clip and sign masking.

Every case uses V = 2 with logits [0, 0] and target 0, so p = (0.5, 0.5) and logp = log 0.5. The old
log-prob is set to logp - log(rho) to get the ratio rho we want. The gradient of logp with respect to the
logits is (1 - p_0, -p_1) = (0.5, -0.5), so grad logits = dL/dlogp * (0.5, -0.5), with
dL/dlogp = -A * rho on the unclipped branch and 0 where a clip is active.
"""

import math

import pytest
import torch
from kernel_inputs import BACKENDS

from lrm_fast.kernels import grpo_loss

CASES = [
    # (id, A, rho, options, loss, dL/dlogp)
    # A > 0, rho = 1.5 > 1 + 0.2: max(-1.5, -1.2) = -1.2, the clipped branch: no gradient.
    ("pos_above_clip", 1.0, 1.5, {}, -1.2, 0.0),
    # A > 0, rho = 0.5 < 1 - 0.2: max(-0.5, -0.8) = -0.5, unclipped: dL/dlogp = -A * rho = -0.5.
    ("pos_below_clip", 1.0, 0.5, {}, -0.5, -0.5),
    # A > 0 inside the range, rho = 1.1: both branches -1.1, dL/dlogp = -1.1.
    ("pos_inside", 1.0, 1.1, {}, -1.1, -1.1),
    # clip_high = 0.28 (DAPO): A > 0, rho = 1.5: max(-1.5, -1.28) = -1.28, clipped.
    ("pos_clip_high", 1.0, 1.5, {"clip_high": 0.28}, -1.28, 0.0),
    # A = -2, rho = 0.5 < 0.8: max(1.0, 1.6) = 1.6, clipped: no gradient.
    ("neg_below_clip", -2.0, 0.5, {}, 1.6, 0.0),
    # A = -2, rho = 1.5: max(3.0, 2.4) = 3.0, unclipped: dL/dlogp = 2 * 1.5 = 3.0.
    ("neg_above_clip", -2.0, 1.5, {}, 3.0, 3.0),
    # clip_low = 0.4: A = -2, rho = 0.7 inside [0.6, 1.2]: loss 1.4, dL/dlogp = 1.4.
    ("neg_clip_low", -2.0, 0.7, {"clip_low": 0.4}, 1.4, 1.4),
    # dual clip c = 3: A = -2, rho = 4: max(8, 2.4) = 8 capped at -A * c = 6, no gradient.
    ("dual_clip_cap", -2.0, 4.0, {"dual_clip": 3.0}, 6.0, 0.0),
    # dual clip c = 3 below the cap: A = -2, rho = 2: loss 4 < 6, dL/dlogp = 4.
    ("dual_clip_below_cap", -2.0, 2.0, {"dual_clip": 3.0}, 4.0, 4.0),
    # dual clip never touches A > 0: A = 1, rho = 4: max(-4, -1.2) = -1.2.
    ("dual_clip_pos", 1.0, 4.0, {"dual_clip": 3.0}, -1.2, 0.0),
    # sign masking: positive_weight = 0 drops an A > 0 token entirely.
    ("pos_dropped", 1.0, 0.5, {"positive_weight": 0.0}, 0.0, 0.0),
    # negative_weight = 0.5 halves an A < 0 token: 0.5 * 3.0 = 1.5, dL/dlogp = 0.5 * 3.0 = 1.5.
    ("neg_halved", -2.0, 1.5, {"negative_weight": 0.5}, 1.5, 1.5),
    # positive_weight = 0.1 (W-REINFORCE): 0.1 * -0.5 = -0.05, dL/dlogp = -0.05.
    ("pos_weighted", 1.0, 0.5, {"positive_weight": 0.1}, -0.05, -0.05),
    # A = 0 ignores both sign weights: loss 0 and no gradient.
    ("zero_advantage", 0.0, 1.5, {"positive_weight": 0.0, "negative_weight": 0.0}, 0.0, 0.0),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("advantage", "rho", "options", "loss", "dlogp"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hand_computed_loss(backend, advantage, rho, options, loss, dlogp):
    logits = torch.zeros(1, 2, requires_grad=True)
    old = torch.tensor([math.log(0.5) - math.log(rho)])
    out, stats = grpo_loss(
        logits, torch.tensor([0]), old, torch.tensor([advantage]), torch.ones(1), backend=backend, **options
    )
    out.backward()
    assert out.item() == pytest.approx(loss, abs=1e-6)
    torch.testing.assert_close(logits.grad, torch.tensor([[0.5 * dlogp, -0.5 * dlogp]]), atol=1e-6, rtol=1e-6)
    capped = advantage < 0 and rho > options.get("dual_clip", math.inf)
    clipped = dlogp == 0.0 and loss != 0.0 and not capped
    assert stats["clip_fraction"].item() == float(clipped)
    assert stats["dual_clip_fraction"].item() == float(capped)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_kl_and_entropy(backend):
    """On-policy, A = 0, ref = logp + log 2: d = log 2, k3 = 2 - log 2 - 1 = 0.30685; H = log 2.

    loss = kl_coef * k3 - entropy_coef * H = 0.1 * 0.30685 - 0.01 * 0.69315 = 0.023754.
    dL/dlogp = kl_coef * (1 - e^d) = 0.1 * (1 - 2) = -0.1, and at p = (0.5, 0.5) the entropy is at its
    maximum, so dH/dlogits = 0: grad = -0.1 * (0.5, -0.5).
    """
    logits = torch.zeros(1, 2, requires_grad=True)
    ref = torch.tensor([math.log(0.5) + math.log(2.0)])
    out, stats = grpo_loss(
        logits,
        torch.tensor([0]),
        None,
        torch.zeros(1),
        torch.ones(1),
        ref_logprobs=ref,
        kl_coef=0.1,
        entropy_coef=0.01,
        backend=backend,
    )
    out.backward()
    assert out.item() == pytest.approx(0.1 * (1 - math.log(2)) - 0.01 * math.log(2), abs=1e-6)
    assert stats["ref_kl"].item() == pytest.approx(1 - math.log(2), abs=1e-6)
    assert stats["entropy"].item() == pytest.approx(math.log(2), abs=1e-6)
    torch.testing.assert_close(logits.grad, torch.tensor([[-0.05, 0.05]]), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_policy_ratio_is_one_with_gradient_minus_advantage(backend):
    """old_logprobs=None: rho = exp(logp - logp.detach()) = 1, so loss = -A and dL/dlogp = -A."""
    logits = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    out, stats = grpo_loss(
        logits, torch.tensor([2]), None, torch.tensor([0.7]), torch.ones(1), backend=backend
    )
    out.backward()
    p = torch.softmax(logits.detach(), -1)
    assert out.item() == pytest.approx(-0.7, abs=1e-7)
    torch.testing.assert_close(logits.grad, -0.7 * (torch.tensor([[0.0, 0.0, 1.0]]) - p))
    assert stats["approx_kl"].item() == 0.0 and stats["clip_fraction"].item() == 0.0
