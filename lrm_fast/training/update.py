"""The policy update of one rollout batch: forward/backward over the micro-batches, clipped optimizer steps.

By default (trainer.mini_batches = trainer.epochs = 1, as in the study's baseline runs) one optimizer step
per rollout batch, so the update is exactly on-policy and the ratio's denominator is the current log-prob
itself (old_logprobs=None: ratio 1, gradient -A). With several mini-batches or epochs (verl's
ppo_mini_batch_size and ppo_epochs; the study's Luffy_loss.sh takes two steps per rollout batch), the
log-probs of the policy that sampled are recorded once, before the first step (verl's compute_log_prob,
ray_trainer.py:1000-1003): the first step's ratio is 1, and the clip and dual clip act from the second on.
The sampler's own log-probs enter only when the batch carries them (rollout.log_mismatch or
rollout.tis_cap): the mismatch is measured and, with a correction, each token's weight is multiplied by
the truncated or masked importance ratio between trainer and sampler (sampler_correction.py).
"""

import itertools
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from lrm_fast.batching.micro_batches import MicroBatch, collate, micro_batches, model_inputs
from lrm_fast.config import LossConfig
from lrm_fast.config.choices import Objective, PackedAttention, RatioLevel
from lrm_fast.kernels import grpo_loss, grpo_loss_from_hidden, token_logprobs
from lrm_fast.kernels.reference import LOG_RATIO_CLAMP
from lrm_fast.model.attention import packed_attention
from lrm_fast.model.fsdp import gradient_scale
from lrm_fast.runtime import all_reduce
from lrm_fast.training.sampler_correction import (
    MEASURED_ONLY,
    MISMATCH_SUMS,
    SamplerCorrection,
    sampler_correction,
)

SUMMED_STATS = ("clip_fraction", "dual_clip_fraction", "approx_kl", "ref_kl", "entropy")
# loss.ratio_level=sequence: the means over sequences, weighted by their count (kept_sequences); the
# extremes are reduced as such, over micro-batches, ranks and the optimizer steps of a batch.
SEQUENCE_MEANS = ("seq_ratio_mean", "seq_clip_fraction")
SEQUENCE_EXTREMES = {"seq_ratio_min": min, "seq_ratio_max": max}

# Clip bounds that never bind: the kernels' ratio is exp of a log-ratio clamped to +-LOG_RATIO_CLAMP, so
# it stays inside [e^-20, e^20] and the clipped loss max(-A rho, -A clip(rho)) is -A rho. The study's
# LUFFY loss leaves the policy's own tokens so (core_algos.py:361, its cliprange never read).
NO_CLIP = {"clip_low": 1.0 - math.exp(-LOG_RATIO_CLAMP - 1.0), "clip_high": math.inf}


@dataclass
class UpdateResult:
    loss: float
    grad_norm: float
    nonfinite: str | None  # the first non-finite quantity ("loss", ...); None: the step was taken
    stats: dict[str, float]
    steps: int = 1  # optimizer steps behind these numbers (means over them; kept_tokens summed)

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


# Over the size budget by its docstring and its arguments: the one place a micro-batch's loss is assembled
# (logits or fused head, clipped or shaped tokens, reference KL), kept whole so the paths read side by side.
def micro_batch_loss(
    model,
    ref_model,
    batch: MicroBatch,
    loss_cfg: LossConfig,
    temperature: float,
    shaping_gamma: float | None = None,
    correction: SamplerCorrection = MEASURED_ONLY,
    clip_policy_tokens: bool = True,
):
    """Loss of one micro-batch (already globally normalised through batch.weights) and its stats.

    With `shaping_gamma`, tokens of injected responses leave the clipped loss (and its KL, entropy and
    stats) for LUFFY's shaped term -A * p / (p + gamma), p = pi(token), unclipped (PAPER.md §5); with
    `clip_policy_tokens=False` too, the other tokens' ratio is not clipped either (-A * rho: the study's
    LUFFY loss, core_algos.py:361; a dual clip, when set, still caps them).
    With `loss_cfg.fused_head` the loss comes from the final hidden states and the head's weight
    (grpo_loss_from_hidden): the [N, V] logits of the policy never exist.
    When the batch carries the sampler's log-probs, the mismatch with the trainer's is measured and,
    with an applied `correction`, each token's weight is multiplied by its factor (sampler_correction).
    """
    ref_logprobs = None
    if ref_model is not None:
        with torch.no_grad():
            ref_logprobs = reference_logprobs(ref_model, batch, loss_cfg, temperature)
    shaped = batch.injected if shaping_gamma is not None else torch.zeros_like(batch.injected)
    inputs, logits_of = _policy_forward(model, batch, loss_cfg)
    weights, mismatch = _token_weights(batch, shaped, logits_of, loss_cfg, temperature, correction)
    loss_fn = grpo_loss_from_hidden if loss_cfg.fused_head else grpo_loss
    sequence_level = RatioLevel(loss_cfg.ratio_level) == RatioLevel.sequence
    unclipped = shaping_gamma is not None and not clip_policy_tokens
    clip = NO_CLIP if unclipped else {"clip_low": loss_cfg.clip_low, "clip_high": loss_cfg.clip_high}
    loss, stats = loss_fn(
        *inputs,
        batch.targets,
        batch.old_logprobs,
        batch.advantages,
        weights,
        temperature=temperature,
        objective=Objective(loss_cfg.objective).value,
        ratio_level=RatioLevel(loss_cfg.ratio_level).value,
        sequence_index=batch.sequence_index() if sequence_level else None,
        **clip,
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


def _token_weights(batch: MicroBatch, shaped, logits_of, loss_cfg: LossConfig, temperature, correction):
    """(weights [N], mismatch sums): the batch's weights without the shaped tokens, times the sampler
    correction's factor when the batch carries the sampler's log-probs. The ratio's numerator is pi_old
    (the trainer's policy that the rollout stands for), recorded or, with one step, the current one."""
    weights = batch.weights.masked_fill(shaped, 0.0)
    mismatch = torch.zeros(len(MISMATCH_SUMS), dtype=torch.float64)
    if batch.sampler_logprobs is not None:
        with torch.no_grad():
            logp = batch.old_logprobs
            if logp is None:
                logp = _chunked_logprobs(logits_of, batch.targets, temperature, loss_cfg.backend)
            sequence = batch.sequence_index() if correction.level == "sequence" else None
            factor, mismatch = sampler_correction(logp, batch.sampler_logprobs, correction, sequence)
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
    correction: SamplerCorrection = MEASURED_ONLY,
    clip_policy_tokens: bool = True,
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
    sequences = _SequenceTotals() if RatioLevel(loss_cfg.ratio_level) == RatioLevel.sequence else None
    for i in range(_agreed_count(len(batches))):
        if i >= len(batches):
            _zero_loss_pass(model, device)
            continue
        batch = _to_device(batches[i], device)
        # Over the backward too: activation checkpointing re-runs the forward there.
        with attention_for(model, batch, loss_cfg.packed_attention):
            loss, stats = micro_batch_loss(
                model, ref_model, batch, loss_cfg, temperature, shaping_gamma, correction, clip_policy_tokens
            )
            (loss * gradient_scale()).backward()
            kept = stats["kept_tokens"].item()
        totals += torch.tensor([stats[k].item() * kept for k in SUMMED_STATS] + [kept, loss.item()])
        mismatch += stats["mismatch"]
        if sequences is not None:
            sequences.add(stats)
    all_reduce(totals)
    all_reduce(mismatch)
    loss = totals[-1].item()
    grad_norm, nonfinite = _clipped_step(model, optimizer, grad_clip, loss_finite=math.isfinite(loss))
    stats = _mean_stats(totals, mismatch) | ({} if sequences is None else sequences.reduced())
    return UpdateResult(loss, grad_norm, nonfinite, stats)


class _SequenceTotals:
    """The sequence-ratio stats of loss.ratio_level=sequence, over micro-batches and then ranks."""

    def __init__(self):
        self.sums = torch.zeros(len(SEQUENCE_MEANS) + 1, dtype=torch.float64)  # means * count, count
        self.low = torch.full((1,), math.inf, dtype=torch.float64)
        self.high = torch.full((1,), -math.inf, dtype=torch.float64)

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        count = stats["kept_sequences"].item()
        if count == 0:  # no sequence: its min and max are placeholders
            return
        self.sums += torch.tensor([stats[k].item() * count for k in SEQUENCE_MEANS] + [count])
        self.low.clamp_(max=stats["seq_ratio_min"].item())
        self.high.clamp_(min=stats["seq_ratio_max"].item())

    def reduced(self) -> dict[str, float]:
        """The stats over every rank (a collective: every rank calls it); min and max 0 without sequences."""
        all_reduce(self.sums)
        all_reduce(self.low, op=torch.distributed.ReduceOp.MIN)
        all_reduce(self.high, op=torch.distributed.ReduceOp.MAX)
        count = self.sums[-1].item()
        if count == 0:
            return dict.fromkeys((*SEQUENCE_MEANS, *SEQUENCE_EXTREMES), 0.0) | {"kept_sequences": 0.0}
        stats = {k: self.sums[i].item() / count for i, k in enumerate(SEQUENCE_MEANS)}
        return stats | {
            "seq_ratio_min": self.low.item(),
            "seq_ratio_max": self.high.item(),
            "kept_sequences": count,
        }


def policy_updates(
    model,
    ref_model,
    optimizer,
    mini_batches: list[list[MicroBatch]],
    loss_cfg: LossConfig,
    temperature: float,
    grad_clip: float,
    *,
    epochs: int = 1,
    shaping_gamma: float | None = None,
    correction: SamplerCorrection = MEASURED_ONLY,
    clip_policy_tokens: bool = True,
) -> UpdateResult:
    """The update of one rollout batch: `epochs` passes over its mini-batches (each a list of micro-batches
    with its own normalisers), one `policy_update` per mini-batch, as verl's update_policy
    (dp_actor.py:255-366).

    With more than one step, pi_old is recorded first (`record_old_logprobs`). The first step that is not
    clean (skipped, or non-finite parameters after it) ends the update: the caller's guard then rolls back
    to the state before the first step, or keeps the clean steps before a skipped one. The result holds
    the means over the steps taken (one step: its own result, unchanged).
    """
    if len(mini_batches) * epochs > 1:
        record_old_logprobs(model, [b for mini in mini_batches for b in mini], loss_cfg, temperature)
    settings = (loss_cfg, temperature, grad_clip, shaping_gamma, correction, clip_policy_tokens)
    results = []
    for batches in itertools.chain.from_iterable(itertools.repeat(mini_batches, epochs)):
        results.append(policy_update(model, ref_model, optimizer, batches, *settings))
        if results[-1].skipped:
            break
    return combine_steps(results)


@torch.no_grad()
def record_old_logprobs(model, batches: list[MicroBatch], loss_cfg: LossConfig, temperature: float) -> None:
    """Set every micro-batch's old_logprobs [N] to the current policy's log-probs of its response tokens
    (one forward each, no graph): pi_old of every optimizer step of the rollout batch."""
    device = _device_of(model)
    for i in range(_agreed_count(len(batches))):
        if i >= len(batches):  # FSDP: the same forwards (collectives) on every rank
            model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=False)
            continue
        batch = _to_device(batches[i], device)
        _, logits_of = _policy_forward(model, batch, loss_cfg)
        batches[i].old_logprobs = _chunked_logprobs(logits_of, batch.targets, temperature, loss_cfg.backend)


@torch.no_grad()
def response_log_ratios(model, ref_model, samples, loss_cfg: LossConfig, temperature: float) -> list[float]:
    """sum_t (log pi(t) - log pi_ref(t)) over each sample's response tokens at `temperature` (0 for an
    empty response): the summed k1 estimate of KL(pi || pi_ref), which the study's trainer subtracts, times
    its coefficient, from each response's reward (ray_trainer.py apply_kl_penalty, kl_penalty="kl").

    pi is `model` as it is (the weights that sampled: verl's old_log_prob, recomputed for injected
    responses too; under partial rollouts the newest that sampled the batch), in micro-batches under
    loss.micro_batch_tokens, packed or padded and with the fused head as the loss is; under FSDP every
    rank runs as many forwards as the rank with the most."""
    cut = micro_batches(samples, loss_cfg.micro_batch_tokens, loss_cfg.packing)
    device = _device_of(model)
    sums = {}
    for i in range(_agreed_count(len(cut))):
        if i >= len(cut):  # FSDP: the same forwards (collectives) on every rank
            dummy = torch.zeros((1, 1), dtype=torch.long, device=device)
            model(input_ids=dummy, use_cache=False)
            ref_model(input_ids=dummy, use_cache=False)
            continue
        batch = _to_device(collate(cut[i], loss_cfg.packing), device)
        _, logits_of = _policy_forward(model, batch, loss_cfg)
        logp = _chunked_logprobs(logits_of, batch.targets, temperature, loss_cfg.backend)
        ref_logp = reference_logprobs(ref_model, batch, loss_cfg, temperature)
        per_sample = (logp - ref_logp).double().cpu().split([len(s.response_ids) for s in cut[i]])
        sums.update({id(s): part.sum().item() for s, part in zip(cut[i], per_sample, strict=True)})
    return [sums.get(id(s), 0.0) for s in samples]


def combine_steps(results: list[UpdateResult]) -> UpdateResult:
    """Several optimizer steps as one result: loss and gradient norm averaged over the steps, the stats
    over the steps that carried tokens (an empty mini-batch has none to measure), each over the steps
    that report it (the sampler mismatch needs sampled tokens), kept_tokens summed; the sequence ratios'
    means weighted by their sequences, their min and max over the steps; `nonfinite` is the last step's
    (the one that ended the update)."""
    if len(results) == 1:
        return results[0]
    mean = lambda values: sum(values) / len(values)
    carried = [r for r in results if r.stats["kept_tokens"] > 0] or results
    keys = dict.fromkeys(key for r in carried for key in r.stats)
    stats = {key: mean([r.stats[key] for r in carried if key in r.stats]) for key in keys}
    stats["kept_tokens"] = sum(r.stats["kept_tokens"] for r in results)
    if "kept_sequences" in stats:
        counts = [r.stats["kept_sequences"] for r in results]
        stats["kept_sequences"] = sum(counts)
        for key in SEQUENCE_MEANS:
            stats[key] = sum(r.stats[key] * n for r, n in zip(results, counts, strict=True)) / max(
                sum(counts), 1
            )
    for key, extreme in SEQUENCE_EXTREMES.items():
        values = [r.stats[key] for r in carried if r.stats.get("kept_sequences")]
        if values:
            stats[key] = extreme(values)
    loss, grad_norm = mean([r.loss for r in results]), mean([r.grad_norm for r in results])
    return UpdateResult(loss, grad_norm, results[-1].nonfinite, stats, steps=len(results))


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
