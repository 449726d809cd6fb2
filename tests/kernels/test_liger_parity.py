"""grpo_loss_from_hidden against Liger-Kernel's LigerFusedLinearGRPOLoss where the two define the same loss,
on the same padded batch: the clipped token-level loss with DAPO's token mean (Liger's loss_type="dapo"),
GSPO's sequence-level ratio (importance_sampling_level="sequence") and CISPO (loss_type="cispo"), with the
k3 KL to a reference. Loss and both gradients agree to fp32 precision.

Where the definitions differ (liger_kernel/chunked_loss/grpo_loss.py, 0.8.5):
- CISPO's bounds: Liger clamps the weight from above only, at the absolute epsilon_high
  (clip_coef_fn, lines 78-84); ours clips to [1 - clip_low, 1 + clip_high], so clip_low=1 and
  clip_high=epsilon_high - 1 is Liger's (kernels/policy_terms.py, _cispo_policy_loss).
- The CISPO clip fraction: Liger counts a weight clipped from above only where A > 0 (lines 254-257); ours
  counts every kept token whose weight is clipped (policy_terms.py, _cispo_policy_loss), whatever A's sign.
- Liger refuses importance_sampling_level="sequence" with CISPO (lines 128-132); so do we.
- GSPO's gradient: Liger differentiates the sequence mean of the log-ratios (lines 144-146), each token
  of sequence i getting (-A_i s_i / n_i) times the sum of i's weights; ours is GSPO-token's detached
  ratio (verl's compute_policy_loss_gspo), each token getting its own weight times -A_i s_i
  (kernels/policy_terms.py, RATIO_LEVELS). The two agree wherever the weights are constant within a
  sequence, as under every aggregation here; Liger has no clamp of the log-ratio, ours clamps at +-20.
"""

import pytest
import torch

from lrm_fast.kernels import grpo_loss_from_hidden
from lrm_fast.kernels.reference import token_logprobs

liger = pytest.importorskip("liger_kernel.chunked_loss", reason="the liger extra is not installed")

B, T, H, V, TEMP = 4, 9, 16, 97, 0.7


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g) * 0.5
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T)
    mask[1, 6:] = mask[3, 2:] = 0  # padded rows
    advantages = torch.randn(B, generator=g)
    logp = token_logprobs((hidden @ weight.T).double().view(-1, V), targets.view(-1), temperature=TEMP)
    old = (logp.float() + 0.3 * torch.randn(B * T, generator=g)).view(B, T)
    ref = (logp.float() + 0.2 * torch.randn(B * T, generator=g)).view(B, T)
    return hidden, weight, targets, mask, advantages, old, ref


def _liger(batch, loss_type, epsilon_low, epsilon_high, level="token"):
    hidden, weight, targets, mask, advantages, old, ref = batch
    loss_fn = liger.LigerFusedLinearGRPOLoss(
        beta=0.05, compiled=False, use_ref_model=True, chunk_size=1, epsilon_low=epsilon_low,
        epsilon_high=epsilon_high, loss_type=loss_type, temperature=TEMP, importance_sampling_level=level,
    )  # fmt: skip
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, metrics = loss_fn(h, w, targets, mask, advantages, ref_per_token_logps=ref, old_per_token_logps=old)
    loss.backward()
    return loss.detach(), metrics[-1], h.grad, w.grad


def _ours(batch, backend, **options):
    hidden, weight, targets, mask, advantages, old, ref = batch
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    keep = mask.view(-1) > 0  # the packed layout: the response tokens only
    n = int(keep.sum())
    loss, stats = grpo_loss_from_hidden(
        h.view(-1, H)[keep], w, targets.view(-1)[keep], old.view(-1)[keep],
        advantages[:, None].expand(B, T).reshape(-1)[keep], torch.full((n,), 1.0 / n),
        temperature=TEMP, ref_logprobs=ref.view(-1)[keep], kl_coef=0.05, chunk_size=5, backend=backend,
        sequence_index=torch.arange(B)[:, None].expand(B, T).reshape(-1)[keep], **options,
    )  # fmt: skip
    loss.backward()
    return loss.detach(), stats["clip_fraction"], h.grad, w.grad, stats


def _assert_same(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours[2], theirs[2], rtol=1e-4, atol=1e-6)  # hidden
    torch.testing.assert_close(ours[3], theirs[3], rtol=1e-4, atol=1e-6)  # head weight


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_clipped_token_loss_matches_liger_dapo(backend):
    batch = _batch(0)
    theirs = _liger(batch, "dapo", 0.2, 0.28)
    ours = _ours(batch, backend, clip_low=0.2, clip_high=0.28)
    _assert_same(ours, theirs)
    assert ours[1].item() == pytest.approx(theirs[1].item(), abs=1e-6) and ours[1].item() > 0


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cispo_matches_liger_cispo(backend):
    batch = _batch(1)
    theirs = _liger(batch, "cispo", 0.2, 1.1)  # epsilon_low unused: no lower bound
    ours = _ours(batch, backend, objective="cispo", clip_low=1.0, clip_high=0.1)
    _assert_same(ours, theirs)
    assert theirs[1].item() > 0  # the weight's cap binds
    assert ours[1].item() >= theirs[1].item()  # ours counts A < 0 tokens over the cap too


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gspo_matches_liger_sequence_level(backend):
    batch = _batch(2)
    theirs = _liger(batch, "dapo", 0.1, 0.1, level="sequence")
    ours = _ours(batch, backend, ratio_level="sequence", clip_low=0.1, clip_high=0.1)
    _assert_same(ours, theirs)
    # Both count the tokens of clipped sequences; some sequences clip, not all.
    assert ours[1].item() == pytest.approx(theirs[1].item(), abs=1e-6)
    assert 0 < ours[4]["seq_clip_fraction"].item() < 1
