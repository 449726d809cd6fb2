"""objective="cispo" (MiniMax-M1's CISPO) against a float64 hand formula on small inputs, both backends:
the clipped, detached ratio weighs -A * logp, so a clipped token keeps a gradient that PPO's clip zeroes."""

import pytest
import torch
from kernel_inputs import BACKENDS, loss_inputs, rel_err

from lrm_fast.kernels import grpo_loss, grpo_loss_from_hidden
from lrm_fast.kernels.reference import token_logprobs

LOW, HIGH, T = 0.2, 0.1, 0.7


def _hand(logits, targets, old, advantages, weights):
    """Loss and logits gradient of sum_t w_t * -clip(rho_t) * A_t * logp_t by hand, in float64:
    d logp_t / d z_tj = (1[j == target] - p_tj) / T, and the weight is a constant."""
    z = logits.double() / T
    p = torch.softmax(z, dim=-1)
    logp = torch.log_softmax(z, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    rho = torch.exp(logp - old.double())
    weight = rho.clamp(1 - LOW, 1 + HIGH)
    A, w = advantages.double(), weights.double()
    loss = (w * -weight * A * logp).sum()
    onehot = torch.nn.functional.one_hot(targets, logits.shape[-1]).double()
    grad = (w * -weight * A)[:, None] * (onehot - p) / T
    clipped = ((rho < 1 - LOW) | (rho > 1 + HIGH))[(w != 0)]
    return loss, grad, clipped.double().mean()


def _perturbed_old(logits, targets, seed):
    """The sampler's log-probs at temperature T, perturbed so that ratios land on both sides of the clip."""
    g = torch.Generator().manual_seed(seed)
    logp = token_logprobs(logits.double(), targets, temperature=T).float()
    return logp + 0.15 * torch.randn(logp.shape, generator=g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cispo_matches_the_hand_formula(backend):
    logits, targets, _, advantages, weights, _ = loss_inputs(40, 97, seed=11)
    old = _perturbed_old(logits, targets, seed=11)
    x = logits.clone().requires_grad_()
    options = dict(objective="cispo", temperature=T, clip_low=LOW, clip_high=HIGH)
    loss, stats = grpo_loss(x, targets, old, advantages, weights, backend=backend, **options)
    loss.backward()
    loss64, grad64, clip_fraction = _hand(logits, targets, old, advantages, weights)
    assert rel_err(loss, loss64) <= 1e-5 and rel_err(x.grad, grad64) <= 1e-5
    assert stats["clip_fraction"].item() == pytest.approx(clip_fraction.item(), abs=1e-6)
    assert 0 < stats["clip_fraction"].item() < 1  # the perturbed old log-probs make the clip bind


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_clipped_token_keeps_its_gradient_under_cispo_not_under_ppo(backend):
    logits, targets, old, advantages, weights, _ = loss_inputs(40, 97, seed=12, ratio_spread=1.0)
    weights = weights.clamp(min=1e-3)
    runs = {}
    for objective in ("clipped", "cispo"):
        x = logits.clone().requires_grad_()
        kwargs = dict(objective=objective, clip_low=LOW, clip_high=HIGH, backend=backend)
        loss, _ = grpo_loss(x, targets, old, advantages, weights, **kwargs)
        loss.backward()
        runs[objective] = x.grad
    logp = torch.log_softmax(logits.double(), -1).gather(-1, targets[:, None]).squeeze(-1)
    rho = torch.exp(logp - old.double())
    # PPO's clip binds: A > 0 above the upper bound, A < 0 below the lower one.
    bound = ((advantages > 0) & (rho > 1 + HIGH)) | ((advantages < 0) & (rho < 1 - LOW))
    assert bound.sum() >= 3
    assert torch.all(runs["clipped"][bound] == 0)
    assert torch.all(runs["cispo"][bound].abs().sum(-1) > 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_head_cispo_matches_the_hand_formula_across_chunks(backend):
    g = torch.Generator().manual_seed(13)
    hidden, weight = torch.randn(30, 16, generator=g), torch.randn(97, 16, generator=g) * 0.5
    logits = hidden @ weight.T
    _, targets, _, advantages, weights, _ = loss_inputs(30, 97, seed=13)
    old = _perturbed_old(logits, targets, seed=13)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    options = dict(objective="cispo", temperature=T, clip_low=LOW, clip_high=HIGH)
    loss, stats = grpo_loss_from_hidden(
        h, w, targets, old, advantages, weights, chunk_size=7, backend=backend, **options
    )
    loss.backward()
    loss64, grad64, _ = _hand(logits, targets, old, advantages, weights)
    assert rel_err(loss, loss64) <= 1e-5
    assert rel_err(h.grad, grad64 @ weight.double()) <= 1e-5
    assert rel_err(w.grad, grad64.T @ hidden.double()) <= 1e-5
    assert stats["clip_fraction"].item() > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"objective": "gspo"}, "objective must be one of"),
        ({"objective": "cispo", "clip_low": 1.5}, "clip_low must be <= 1 with objective='cispo'"),
        ({"objective": "cispo", "dual_clip": 2.0}, "objective='cispo' has none"),
        ({"clip_low": 1.0}, "clip_low must be < 1"),
    ],
)
def test_bad_objective_options_are_refused(options, message):
    logits, targets, old, advantages, weights, _ = loss_inputs(4, 10)
    with pytest.raises(ValueError, match=message):
        grpo_loss(logits, targets, old, advantages, weights, backend="torch", **options)
