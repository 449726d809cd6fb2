"""One policy update: forward/backward over the micro-batches, then a clipped optimizer step.

Simplification, as in the study's runs: one optimizer step per rollout batch, so the update is exactly
on-policy and the ratio's denominator is the current log-prob itself (old_logprobs=None: ratio 1,
gradient -A). The sampler's own log-probs enter only when the batch carries them (rollout.log_mismatch
or rollout.tis_cap): the mismatch is measured and, with tis_cap, each token's weight is multiplied by the
truncated importance ratio between trainer and sampler (`sampler_correction`).
"""

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from lrm_fast.batching.micro_batches import MicroBatch, model_inputs
from lrm_fast.config import LossConfig
from lrm_fast.config.choices import PackedAttention
from lrm_fast.kernels import grpo_loss, grpo_loss_from_hidden, token_logprobs
from lrm_fast.model.attention import packed_attention
from lrm_fast.model.fsdp import gradient_scale
from lrm_fast.runtime import all_reduce

SUMMED_STATS = ("clip_fraction", "dual_clip_fraction", "approx_kl", "ref_kl", "entropy")


@dataclass
class UpdateResult:
    loss: float
    grad_norm: float
    nonfinite: str | None  # the first non-finite quantity ("loss", ...); None: the step was taken
    stats: dict[str, float]

    @property
    def skipped(self) -> bool:
        return self.nonfinite is not None


def attention_for(model, batch: MicroBatch, attention: PackedAttention):
    """The context a micro-batch's forward (and backward: activation checkpointing re-runs the forward
    there) runs in: attention within the packed sequences of a packed batch, nothing for a padded one."""
    return packed_attention(model, attention, batch.input_ids.device) if batch.packed else nullcontext()


def response_logits(
    model, batch: MicroBatch, attention: PackedAttention = PackedAttention.auto
) -> torch.Tensor:
    """[N, V] logits of the positions that predict the response tokens (the kernels' packed layout).

    `attention` (loss.packed_attention) picks the attention of a packed batch (model/attention.py)."""
    with attention_for(model, batch, attention):
        logits = model(**model_inputs(batch), use_cache=False).logits
    return logits[batch.row, batch.position]


def response_hidden(
    model, batch: MicroBatch, attention: PackedAttention = PackedAttention.auto
) -> torch.Tensor:
    """[N, H] final hidden states (after the last norm) at the positions that predict the response tokens.

    Through the root model's forward, not model.model(...): FSDP2's hooks on the root gather the
    embeddings, final norm and head before it and reduce their gradients after backward. logits_to_keep=1
    limits the head to one position per row. (An empty selection would save even that, but on CPU it
    made later Triton-interpreter calls fail now and then with "vector::reserve"; cause not pinned down.)
    """
    with attention_for(model, batch, attention):
        out = model(**model_inputs(batch), use_cache=False, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1][batch.row, batch.position]


def micro_batch_loss(
    model,
    ref_model,
    batch: MicroBatch,
    loss_cfg: LossConfig,
    temperature: float,
    shaping_gamma: float | None = None,
    tis_cap: float | None = None,
):
    """Loss of one micro-batch (already globally normalised through batch.weights) and its stats.

    With `shaping_gamma`, tokens of injected responses leave the clipped loss (and its KL, entropy and
    stats) for LUFFY's shaped term -A * p / (p + gamma), p = pi(token), unclipped (PAPER.md §5).
    With `loss_cfg.fused_head` the loss comes from the final hidden states and the head's weight
    (grpo_loss_from_hidden): the [N, V] logits of the policy never exist.
    When the batch carries the sampler's log-probs, the mismatch with the trainer's is measured and,
    with `tis_cap`, each token's weight is multiplied by the truncated importance ratio (sampler_correction).
    """
    ref_logprobs = None
    if ref_model is not None:
        with torch.no_grad():
            ref_logprobs = reference_logprobs(ref_model, batch, loss_cfg, temperature)
    shaped = batch.injected if shaping_gamma is not None else torch.zeros_like(batch.injected)
    inputs, logits_of = _policy_forward(model, batch, loss_cfg)
    weights, mismatch = _token_weights(batch, shaped, logits_of, loss_cfg, temperature, tis_cap)
    loss_fn = grpo_loss_from_hidden if loss_cfg.fused_head else grpo_loss
    loss, stats = loss_fn(
        *inputs,
        batch.targets,
        None,
        batch.advantages,
        weights,
        temperature=temperature,
        clip_low=loss_cfg.clip_low,
        clip_high=loss_cfg.clip_high,
        dual_clip=loss_cfg.dual_clip,
        ref_logprobs=ref_logprobs,
        kl_coef=loss_cfg.kl_coef,
        entropy_coef=loss_cfg.entropy_coef,
        backend=loss_cfg.backend,
    )
    stats["mismatch"] = mismatch
    if shaped.any():
        shaped_logits = logits_of(shaped)
        loss = loss + shaped_injection_loss(
            shaped_logits, batch, shaped, temperature, shaping_gamma, loss_cfg.backend
        )
    return loss, stats


def _token_weights(batch: MicroBatch, shaped, logits_of, loss_cfg: LossConfig, temperature, tis_cap):
    """(weights [N], mismatch sums): the batch's weights without the shaped tokens, times the truncated
    importance ratio to the sampler when the batch carries its log-probs."""
    weights = batch.weights.masked_fill(shaped, 0.0)
    mismatch = torch.zeros(len(MISMATCH_SUMS), dtype=torch.float64)
    if batch.sampler_logprobs is not None:
        with torch.no_grad():
            logp = _chunked_logprobs(logits_of, batch.targets, temperature, loss_cfg.backend)
            factor, mismatch = sampler_correction(logp, batch.sampler_logprobs, tis_cap)
        weights = weights * factor
    return weights, mismatch


def _policy_forward(model, batch: MicroBatch, loss_cfg: LossConfig):
    """(the loss kernel's leading inputs, logits_of(rows) -> [rows, V]) of the policy's forward.

    Plain: (logits,). Fused head: (hidden, head weight), and logits only for the rows asked for."""
    if not loss_cfg.fused_head:
        logits = response_logits(model, batch, loss_cfg.packed_attention)
        return (logits,), lambda rows: logits[rows]
    hidden = response_hidden(model, batch, loss_cfg.packed_attention)
    weight = model.lm_head.weight  # tied to the embeddings: autograd adds both of its gradients
    return (hidden, weight), lambda rows: hidden[rows] @ weight.T


def reference_logprobs(
    ref_model, batch: MicroBatch, loss_cfg: LossConfig, temperature: float
) -> torch.Tensor:
    """[N] log-probs of the response tokens under the frozen reference (the KL term's pi_ref).

    With `loss_cfg.fused_head`, from its hidden states and head a chunk of tokens at a time: the
    reference's [N, V] logits (fp32, the largest buffer of a KL run at 152k vocabularies) never exist."""
    if not loss_cfg.fused_head:
        logits = response_logits(ref_model, batch, loss_cfg.packed_attention)
        return token_logprobs(logits, batch.targets, temperature=temperature, backend=loss_cfg.backend)
    hidden = response_hidden(ref_model, batch, loss_cfg.packed_attention)
    weight = ref_model.lm_head.weight
    logits_of = lambda rows: hidden[rows] @ weight.T
    return _chunked_logprobs(logits_of, batch.targets, temperature, loss_cfg.backend)


MISMATCH_SUMS = ("logp_abs_diff", "prob_ratio", "tis_truncated", "tokens")


def sampler_correction(
    trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, tis_cap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(factor [N], sums [4]) for tokens sampled by a different engine than the trainer (vLLM).

    ratio_t = p_trainer(t) / p_sampler(t) with both at the current weights (one optimizer step per
    rollout: the trainer's value is old_logp). Truncated importance sampling (Yao et al. 2025) weights
    each token's loss by min(ratio_t, tis_cap), so the gradient is that of the trainer's policy although
    the tokens came from the sampler's; the cap bounds its variance. Tokens without a sampler log-prob
    (NaN: injected solutions) keep factor 1 and stay out of the sums (|delta logp|, ratio, truncated,
    count), which the caller adds up over micro-batches and ranks.
    """
    known = ~torch.isnan(sampler_logp)
    delta = torch.where(known, trainer_logp.float() - sampler_logp, 0.0)
    ratio = delta.exp()
    factor = torch.ones_like(ratio) if tis_cap is None else torch.where(known, ratio.clamp(max=tis_cap), 1.0)
    truncated = known & (ratio > tis_cap) if tis_cap is not None else torch.zeros_like(known)
    sums = torch.stack([delta.abs().sum(), ratio[known].sum(), truncated.sum(), known.sum()])
    return factor, sums.double().cpu()


def _chunked_logprobs(logits_of, targets, temperature, backend, chunk: int = 4096) -> torch.Tensor:
    """Trainer log-probs of the targets, `chunk` tokens of logits at a time (the fused head never holds
    all [N, V] logits; for plain logits the chunks are views)."""
    rows = torch.arange(len(targets), device=targets.device)
    parts = [
        token_logprobs(
            logits_of(rows[i : i + chunk]), targets[i : i + chunk], temperature=temperature, backend=backend
        )
        for i in range(0, len(targets), chunk)
    ]
    return torch.cat(parts) if parts else targets.new_zeros(0, dtype=torch.float32)


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
    tis_cap: float | None = None,
):
    """Accumulate gradients over `batches` and take one optimizer step.

    Returns the summed loss and token-weighted stats over every micro-batch of every rank (and the
    sampler mismatch, when the batches carry the sampler's log-probs). A non-finite loss or gradient
    norm skips the step; non-finite parameters after it are reported (`nonfinite`) for the caller to
    roll the step back (lrm_fast/training/guard.py).
    """
    optimizer.zero_grad(set_to_none=True)
    device = _device_of(model)
    totals = torch.zeros(len(SUMMED_STATS) + 2, dtype=torch.float64)  # stats * kept, kept, loss
    mismatch = torch.zeros(len(MISMATCH_SUMS), dtype=torch.float64)
    for i in range(_agreed_count(len(batches))):
        if i >= len(batches):
            _zero_loss_pass(model, device)
            continue
        batch = _to_device(batches[i], device)
        # Over the backward too: activation checkpointing re-runs the forward there.
        with attention_for(model, batch, loss_cfg.packed_attention):
            loss, stats = micro_batch_loss(
                model, ref_model, batch, loss_cfg, temperature, shaping_gamma, tis_cap
            )
            (loss * gradient_scale()).backward()
            kept = stats["kept_tokens"].item()
        totals += torch.tensor([stats[k].item() * kept for k in SUMMED_STATS] + [kept, loss.item()])
        mismatch += stats["mismatch"]
    all_reduce(totals)
    all_reduce(mismatch)
    loss = totals[-1].item()
    grad_norm, nonfinite = _clipped_step(model, optimizer, grad_clip, loss_finite=math.isfinite(loss))
    return UpdateResult(loss, grad_norm, nonfinite, _mean_stats(totals, mismatch))


def _clipped_step(model, optimizer, grad_clip: float, loss_finite: bool) -> tuple[float, str | None]:
    """Clip the gradient norm and step. A non-finite loss or norm skips the step (and drops the
    gradients); returns the norm and the first non-finite quantity, parameters after the step included."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    nonfinite = "loss" if not loss_finite else None if math.isfinite(grad_norm) else "gradient norm"
    if nonfinite is not None:
        optimizer.zero_grad(set_to_none=True)
        return grad_norm, nonfinite
    optimizer.step()
    return grad_norm, None if parameters_finite(model) else "updated parameters"


def parameters_finite(model) -> bool:
    """Whether every parameter of `model` is finite, on every rank (each checks its own shards)."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    finite = torch.stack([torch.isfinite(p).all() for p in local]).all().cpu().reshape(1).int()
    return bool(all_reduce(finite, op=torch.distributed.ReduceOp.MIN).item())


def _mean_stats(totals: torch.Tensor, mismatch: torch.Tensor) -> dict[str, float]:
    """Token-weighted means of the kernel stats, and the sampler mismatch per known token."""
    kept = max(totals[-2].item(), 1.0)
    stats = {k: totals[i].item() / kept for i, k in enumerate(SUMMED_STATS)}
    stats["kept_tokens"] = totals[-2].item()
    if mismatch[-1] > 0:
        count = mismatch[-1].item()
        stats |= {k: mismatch[i].item() / count for i, k in enumerate(MISMATCH_SUMS[:-1])}
    return stats


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
    moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in vars(batch).items()}
    return MicroBatch(**moved)
