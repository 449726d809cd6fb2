"""One policy update: forward/backward over the micro-batches, then a clipped optimizer step.

Simplifications, as in the study's runs: one optimizer step per rollout batch, so the update is exactly
on-policy and the ratio's denominator is the current log-prob itself (old_logprobs=None: ratio 1,
gradient -A); the sampler's own log-probs are not needed for the loss.
"""

import math
from dataclasses import dataclass

import torch

from lrm_fast.batch import MicroBatch
from lrm_fast.config import LossConfig
from lrm_fast.distributed import all_reduce, gradient_scale
from lrm_fast.kernels import grpo_loss, grpo_loss_from_hidden, token_logprobs

SUMMED_STATS = ("clip_fraction", "dual_clip_fraction", "approx_kl", "ref_kl", "entropy")


@dataclass
class UpdateResult:
    loss: float
    grad_norm: float
    skipped: bool
    stats: dict[str, float]


def response_logits(model, batch: MicroBatch) -> torch.Tensor:
    """[N, V] logits of the positions that predict the response tokens (the kernels' packed layout)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return logits[batch.row, batch.position]


def response_hidden(model, batch: MicroBatch) -> torch.Tensor:
    """[N, H] final hidden states (after the last norm) at the positions that predict the response tokens.

    Through the root model's forward, not model.model(...): FSDP2's hooks on the root gather the
    embeddings, final norm and head before it and reduce their gradients after backward. logits_to_keep=1
    limits the head to one position per row. (An empty selection would save even that, but on CPU it
    made later Triton-interpreter calls fail now and then with "vector::reserve"; cause not pinned down.)
    """
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=1,
    )
    return out.hidden_states[-1][batch.row, batch.position]


def micro_batch_loss(
    model,
    ref_model,
    batch: MicroBatch,
    loss_cfg: LossConfig,
    temperature: float,
    shaping_gamma: float | None = None,
):
    """Loss of one micro-batch (already globally normalised through batch.weights) and its stats.

    With `shaping_gamma`, tokens of injected responses leave the clipped loss (and its KL, entropy and
    stats) for LUFFY's shaped term -A * p / (p + gamma), p = pi(token), unclipped (PAPER.md §5).
    With `loss_cfg.fused_head` the loss comes from the final hidden states and the head's weight
    (grpo_loss_from_hidden): the [N, V] logits of the policy never exist.
    """
    ref_logprobs = None
    if ref_model is not None:
        with torch.no_grad():
            ref_logits = response_logits(ref_model, batch)
            ref_logprobs = token_logprobs(
                ref_logits, batch.targets, temperature=temperature, backend=loss_cfg.backend
            )
    shaped = batch.injected if shaping_gamma is not None else torch.zeros_like(batch.injected)
    args = (batch.targets, None, batch.advantages, batch.weights.masked_fill(shaped, 0.0))
    options = dict(
        temperature=temperature,
        clip_low=loss_cfg.clip_low,
        clip_high=loss_cfg.clip_high,
        dual_clip=loss_cfg.dual_clip,
        ref_logprobs=ref_logprobs,
        kl_coef=loss_cfg.kl_coef,
        entropy_coef=loss_cfg.entropy_coef,
        backend=loss_cfg.backend,
    )
    has_shaped = bool(shaped.any())
    if loss_cfg.fused_head:
        hidden = response_hidden(model, batch)
        weight = model.lm_head.weight  # tied to the embeddings: autograd adds both of its gradients
        loss, stats = grpo_loss_from_hidden(hidden, weight, *args, **options)
        shaped_logits = hidden[shaped] @ weight.T if has_shaped else None
    else:
        logits = response_logits(model, batch)
        loss, stats = grpo_loss(logits, *args, **options)
        shaped_logits = logits[shaped] if has_shaped else None
    if has_shaped:
        shaping = shaped_injection_loss(
            shaped_logits, batch, shaped, temperature, shaping_gamma, loss_cfg.backend
        )
        loss = loss + shaping
    return loss, stats


def shaped_injection_loss(
    shaped_logits, batch: MicroBatch, shaped, temperature, gamma, backend
) -> torch.Tensor:
    """sum_t w_t * -A_t * p_t / (p_t + gamma) over the `shaped` tokens, from their logits [n_shaped, V]:
    LUFFY's policy shaping, which keeps learning from low-probability off-policy tokens (the gradient is
    largest near p = gamma)."""
    p = token_logprobs(shaped_logits, batch.targets[shaped], temperature=temperature, backend=backend).exp()
    return (batch.weights[shaped] * -batch.advantages[shaped] * p / (p + gamma)).sum()


def policy_update(
    model,
    ref_model,
    optimizer,
    batches,
    loss_cfg: LossConfig,
    temperature: float,
    grad_clip: float,
    shaping_gamma: float | None = None,
):
    """Accumulate gradients over `batches` and take one optimizer step (skipped if not finite).

    Returns the summed loss and token-weighted stats over every micro-batch of every rank.
    """
    optimizer.zero_grad(set_to_none=True)
    device = _device_of(model)
    totals = torch.zeros(len(SUMMED_STATS) + 2, dtype=torch.float64)  # stats * kept, kept, loss
    for i in range(_agreed_count(len(batches))):
        if i >= len(batches):
            _zero_loss_pass(model, device)
            continue
        batch = _to_device(batches[i], device)
        loss, stats = micro_batch_loss(model, ref_model, batch, loss_cfg, temperature, shaping_gamma)
        (loss * gradient_scale()).backward()
        kept = stats["kept_tokens"].item()
        totals += torch.tensor([stats[k].item() * kept for k in SUMMED_STATS] + [kept, loss.item()])
    all_reduce(totals)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    skipped = not math.isfinite(grad_norm)
    if skipped:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    kept = max(totals[-2].item(), 1.0)
    stats = {k: totals[i].item() / kept for i, k in enumerate(SUMMED_STATS)}
    stats["kept_tokens"] = totals[-2].item()
    return UpdateResult(totals[-1].item(), grad_norm, skipped, stats)


def _agreed_count(count: int) -> int:
    # FSDP ranks must run the same collectives: every rank runs as many forward/backward passes as the
    # rank with the most micro-batches, padding with zero-loss passes.
    return int(all_reduce(torch.tensor([count]), op=torch.distributed.ReduceOp.MAX).item())


def _zero_loss_pass(model, device) -> None:
    dummy = torch.zeros((1, 1), dtype=torch.long, device=device)
    (model(input_ids=dummy, use_cache=False).logits.sum() * 0.0).backward()


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _to_device(batch: MicroBatch, device: torch.device) -> MicroBatch:
    if device.type == "cpu":
        return batch
    return MicroBatch(*(t.to(device, non_blocking=True) for t in vars(batch).values()))
