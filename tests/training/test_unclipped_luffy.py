"""The study's LUFFY loss with unclipped policy tokens (injection.clip_policy_tokens=false): the kernels'
clip with bounds that never bind, and one micro-batch's loss against the study's
compute_token_on_off_policy_loss written out in torch."""

import math
from types import SimpleNamespace

import pytest
import torch

from lrm_fast.batching import micro_batches as M
from lrm_fast.batching import samples as B
from lrm_fast.config import LossConfig
from lrm_fast.kernels import grpo_loss
from lrm_fast.training.update import NO_CLIP, micro_batch_loss

BACKENDS = ["torch", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_clip_bounds_give_minus_a_rho_at_every_ratio(backend):
    """Log-ratios out to +-25 (past the kernels' +-20 clamp): loss and gradient are those of
    sum_t w_t * -A_t * rho_t, rho on the clamped log-ratio, and no token counts as clipped."""
    logits = torch.tensor([[0.0, 0.0]] * 6, requires_grad=True)  # logp = log 0.5 for target 0
    log_ratio = torch.tensor([-25.0, -3.0, -0.5, 0.4, 3.0, 25.0])
    old = math.log(0.5) - log_ratio
    advantages = torch.tensor([-1.0, 1.0, -2.0, 0.5, -1.0, 1.0])
    weights = torch.full((6,), 0.25)
    targets = torch.zeros(6, dtype=torch.long)
    loss, stats = grpo_loss(logits, targets, old, advantages, weights, backend=backend, **NO_CLIP)
    loss.backward()

    reference_logits = logits.detach().clone().requires_grad_(True)
    logp = torch.log_softmax(reference_logits, -1)[:, 0]
    rho = torch.exp((logp - old).clamp(-20.0, 20.0))
    expected = (weights * -advantages * rho).sum()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(logits.grad, reference_logits.grad, rtol=1e-6, atol=1e-12)
    assert stats["clip_fraction"].item() == 0.0


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are a parameter: the loss's arithmetic can be done by hand."""

    def __init__(self, logits: torch.Tensor):  # [b, L, V]
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, input_ids, **_):
        return SimpleNamespace(logits=self.logits)


# Three one-token responses (V = 4). The logits are log-probabilities, so p(target) is exact:
#   policy token,   A = +1, p = 0.5, pi_old = 0.25: rho = 2
#   policy token,   A = -1, p = 0.1, pi_old = 0.2:  rho = 0.5
#   injected token, A = +1, p = 0.1 (LUFFY: -A * p / (p + 0.1), gamma 0.1)
P = [[0.5, 0.2, 0.2, 0.1], [0.1, 0.3, 0.3, 0.3], [0.1, 0.3, 0.3, 0.3]]
ADVANTAGES, OLD_P, INJECTED = [1.0, -1.0, 1.0], [0.25, 0.2, 0.5], [False, False, True]
C = 4  # token sums over the padded response length (loss_remove_token_mean)


def _batch_and_model():
    samples = [
        B.Sample([1], [0], reward=a, correct=a > 0, advantage=a, injected=inj)
        for a, inj in zip(ADVANTAGES, INJECTED, strict=True)
    ]
    B.assign_weights(samples, "token_sum", B.local_normalisers(samples), sum_norm_length=C)
    batch = M.collate(samples, packed=False)
    batch.old_logprobs = torch.tensor(OLD_P).log()
    logits = torch.zeros(3, 2, 4)
    logits[:, 0] = torch.tensor(P).log()  # position 0 predicts each response's token (id 0)
    return batch, FixedLogits(logits)


def _study_luffy_loss(logits, old_logprob, advantages, prefix_mask, eos_mask):
    """core_algos.compute_token_on_off_policy_loss with loss_remove_token_mean=True (core_algos.py:322-395
    of the study's verl fork), on [bs, response_length] tensors."""
    log_prob = torch.log_softmax(logits, -1)[..., 0]  # the targets are token 0
    ratio = torch.exp(log_prob - old_logprob)
    on_pg_losses = -advantages * ratio  # cliprange is never used
    off_ratio = torch.exp(log_prob)
    off_ratio = off_ratio / (off_ratio + 0.1)
    off_pg_losses = -advantages * off_ratio
    prefix_mask = prefix_mask.float()
    pg_losses = off_pg_losses * prefix_mask + on_pg_losses * (1 - prefix_mask)
    return (pg_losses * eos_mask).sum() / eos_mask.shape[-1]


@pytest.mark.parametrize(
    ("clip_policy_tokens", "expected"),
    [
        # -1 * 2 (rho = 2 unclipped) + 1 * 0.5 (rho = 0.5) - 0.1 / 0.2 = -2.0, over C = 4: -0.5
        (False, -0.5),
        # clip 0.35: max(-2, -1.35) = -1.35 and max(0.5, 0.65) = 0.65; -1.35 + 0.65 - 0.5 = -1.2, / 4 = -0.3
        (True, -0.3),
    ],
    ids=["study_unclipped", "clipped"],
)
def test_hand_computed_luffy_loss(clip_policy_tokens, expected):
    batch, model = _batch_and_model()
    loss_cfg = LossConfig(clip_low=0.35, clip_high=0.35, backend="torch")
    loss, stats = micro_batch_loss(
        model, None, batch, loss_cfg, 1.0, shaping_gamma=0.1, clip_policy_tokens=clip_policy_tokens
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["clip_fraction"].item() == (0.0 if not clip_policy_tokens else 1.0)


def test_unclipped_luffy_matches_the_studys_formula_in_loss_and_gradient():
    batch, model = _batch_and_model()
    loss_cfg = LossConfig(clip_low=0.35, clip_high=0.35, backend="torch")
    loss, _ = micro_batch_loss(model, None, batch, loss_cfg, 1.0, shaping_gamma=0.1, clip_policy_tokens=False)
    loss.backward()

    logits = model.logits.detach()[:, 0].clone().requires_grad_(True)  # [bs = 3, V]; response_length 1
    padded = lambda values: torch.tensor(values).reshape(3, 1)
    # eos_mask [bs, C]: each response holds one token in a window padded to C.
    eos_mask = torch.zeros(3, C)
    eos_mask[:, 0] = 1.0
    expected = _study_luffy_loss(
        logits.unsqueeze(1).expand(3, C, 4),
        padded(OLD_P).log().expand(3, C),
        padded(ADVANTAGES).expand(3, C),
        padded(INJECTED).bool().expand(3, C),
        eos_mask,
    )
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(model.logits.grad[:, 0], logits.grad, rtol=1e-5, atol=1e-8)
