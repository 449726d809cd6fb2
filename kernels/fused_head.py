"""grpo_loss_from_hidden: the GRPO loss of `hidden @ weight.T`, chunked so that the [N, V] logits never exist.

Same math, options and stats as `grpo_loss` (grpo_loss.py) on logits = hidden @ weight.T, the LM head
applied to the final hidden states. The per-token terms need global quantities only through `weights`
(already globally normalised), so splitting the tokens into chunks is exact. Per chunk of c kept tokens:

    logits = h @ W.T                        [c, V], the inputs' dtype (bf16 matmul, fp32 accumulation)
    dlogits = d loss / d logits             the backend's row passes, written over the logits chunk
    grad_hidden[rows] = dlogits @ W         [c, H]
    grad_W += dlogits.T @ h                 [V, H], accumulated in fp32

so the gradient is complete when the forward returns and backward only scales it (no recompute). Tokens
whose weight (or sign weight) is 0 are dropped before the head matmul: their loss and gradient are 0.

Row passes: the torch backend's chunk math (chunked.py; one upcast fp32 copy of the chunk and its
softmax) or the Triton passes (softmax_rows.py; two reads and one in-place write of the chunk).
Memory: one chunk of logits and its temporaries, grad_hidden [N, H] and a fp32 [V, H] accumulator,
instead of the [N, V] logits and their gradient. For bf16 weights the accumulator is twice the weight's
size, plus one bf16 [V, H] product per chunk: weight-sized buffers, independent of N.
Compute: 3 matmuls of 2*c*V*H flops per chunk (logits, grad_hidden, grad_W), as the unfused head's
forward and backward; no recompute. The kept-token count costs one host sync per call.

ratio_level="sequence" (GSPO): a sequence spans chunks, and no token's coefficient is known before its
whole sequence's log-probs are. So a first pass computes every chunk's logits and softmax statistics
(logp, logsumexp, entropy: O(N) kept), the per-token terms follow over all tokens, and the second pass
computes each chunk's logits again for the gradient: 4 matmuls per chunk instead of 3, and one more read
of each chunk's logits; the memory stays one chunk.
"""

import torch

from .checks import (
    Backend,
    check_hidden_and_weight,
    check_reference,
    check_sequence_index,
    check_targets,
    check_vector,
    resolve_backend,
)
from .grpo_loss import ROW_PASSES, SCALE, STATS, grad_pass
from .policy_terms import LossOptions, policy_terms, segments, stat_names, take_stored_grads

# Logits elements per chunk when chunk_size is None. torch: the chunk math holds three fp32 chunks at
# once (16 MiB each, 131 rows at V=32000); more rows speed the CPU matmuls up only a little. triton: rows
# enough for the GPU's matmuls to run at full rate (e.g. 883 rows at V=151936: a 256 MiB bf16 chunk).
CHUNK_ELEMENTS = {Backend.torch: 1 << 22, Backend.triton: 1 << 27}


def _kept_rows(advantages, weights, options: LossOptions) -> torch.Tensor | None:
    """Indices of the tokens with a nonzero loss scale (weights * sign weight), or None for all of them."""
    keep = weights != 0
    if options.positive_weight == 0:
        keep &= ~(advantages > 0)
    if options.negative_weight == 0:
        keep &= ~(advantages < 0)
    kept = keep.nonzero().squeeze(1)  # a host sync, once per call: the chunk loop needs the count
    return None if kept.numel() == keep.numel() else kept


def grpo_loss_from_hidden_fwd(
    hidden, weight, targets, vectors, options: LossOptions, *, rows, backend, needs_grad, sequence_index=None
):
    """Loss, stats and (grad_hidden, grad_weight), each None where `needs_grad` says so.

    `vectors` are (old_logp, advantages, weights, ref_logp), [N] or None.
    """
    if sequence_index is not None:  # runs numbered before rows drop: a dropped run must not join two others
        sequence_index = segments(sequence_index, len(targets))
    kept = _kept_rows(vectors[1], vectors[2], options)
    if kept is not None:
        targets = targets[kept]
        vectors = tuple(None if t is None else t[kept] for t in vectors)
        sequence_index = None if sequence_index is None else sequence_index[kept]
    n_kept = targets.shape[0]
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    grads = _GradAccumulator(hidden, weight, kept, dtype, needs_grad)
    chunks = [(i, min(i + rows, n_kept)) for i in range(0, n_kept, rows)]
    index = lambda i, j: slice(i, j) if kept is None else kept[i:j]
    if options.ratio_level == "token":
        logp, entropy = (torch.empty(n_kept, dtype=dtype, device=hidden.device) for _ in range(2))
        for i, j in chunks:
            logits = hidden[index(i, j)] @ weight.T  # [c, V]; the row passes overwrite it with its gradient
            chunk = (targets[i:j], *(None if t is None else t[i:j] for t in vectors))
            logp[i:j], entropy[i:j], _ = ROW_PASSES[backend](logits, *chunk, logits, options)
            grads.add(logits, i, j)
        terms = policy_terms(logp, entropy, *vectors, options)
    else:
        stats = [
            STATS[backend](hidden[index(i, j)] @ weight.T, targets[i:j], options.temperature, True)
            for i, j in chunks
        ]
        logp, lse, entropy = (_joined([s[k] for s in stats], n_kept, dtype, hidden.device) for k in range(3))
        terms = policy_terms(logp, entropy, *vectors, options, sequence_index)
        for i, j in chunks:  # pass 2: the logits again, now that every coefficient is known
            logits = hidden[index(i, j)] @ weight.T
            coefficients = (terms.dlogp[i:j], terms.dentropy[i:j])
            grad_pass(backend, logits, targets[i:j], lse[i:j], entropy[i:j], *coefficients, logits, options)
            grads.add(logits, i, j)
    stats = torch.stack([terms.stats[name] for name in stat_names(options)])
    return terms.loss, stats, grads.result()


def _joined(parts, n, dtype, device) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.empty(n, dtype=dtype, device=device)


class _GradAccumulator:
    """grad_hidden [N, H] and grad_weight [V, H] (fp32 sums), from each chunk's dL/dlogits."""

    def __init__(self, hidden, weight, kept, dtype, needs_grad):
        self.hidden, self.weight, self.kept, self.dtype = hidden, weight, kept, dtype
        self.grad_hidden = torch.zeros_like(hidden) if needs_grad[0] else None
        self.grad_weight = (
            torch.zeros(weight.shape, dtype=dtype, device=weight.device) if needs_grad[1] else None
        )

    def add(self, dlogits: torch.Tensor, i: int, j: int) -> None:
        index = slice(i, j) if self.kept is None else self.kept[i:j]
        if self.grad_hidden is not None:
            self.grad_hidden[index] = dlogits @ self.weight
        if self.grad_weight is None:
            return
        h = self.hidden[index]
        if dlogits.dtype == self.dtype:
            self.grad_weight.addmm_(dlogits.T, h)
        else:  # bf16 / fp16: the matmul in that dtype, the sum over chunks in fp32
            self.grad_weight += dlogits.T @ h

    def result(self):
        grad_weight = None if self.grad_weight is None else self.grad_weight.to(self.weight.dtype)
        return self.grad_hidden, grad_weight


class _GRPOLossFromHidden(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        targets,
        old_logp,
        advantages,
        weights,
        ref_logp,
        sequence_index,
        options,
        rows,
        backend,
    ):
        vectors = (old_logp, advantages, weights, ref_logp)
        needs_grad = ctx.needs_input_grad[:2]
        loss, stats, ctx.stored_grads = grpo_loss_from_hidden_fwd(
            hidden,
            weight,
            targets,
            vectors,
            options,
            rows=rows,
            backend=backend,
            needs_grad=needs_grad,
            sequence_index=sequence_index,
        )
        ctx.backend = backend
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        grads = take_stored_grads(ctx, "grpo_loss_from_hidden")
        scale = grad_loss.float()  # fp32 on both backends, as the Triton scale kernel reads it
        grad_hidden, grad_weight = (None if g is None else SCALE[ctx.backend](g, scale) for g in grads)
        return grad_hidden, grad_weight, *[None] * 9


# Long for its signature and argument docs: the keyword contract of grpo_loss, spelled out once more.
def grpo_loss_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    *,
    temperature: float = 1.0,
    objective: str = "clipped",
    ratio_level: str = "token",
    sequence_index: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    positive_weight: float = 1.0,
    negative_weight: float = 1.0,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """grpo_loss(hidden @ weight.T, ...) without the [N, V] logits (see the module docstring).

    Args:
        hidden: [N, H] final hidden states (after the last norm) at the positions that predict the
            targets; fp32 / bf16 / fp16 (fp64 on the torch backend).
        weight: [V, H] the LM head's weight (for tied embeddings, the embedding matrix), hidden's dtype.
        targets, old_logprobs, advantages, weights, temperature, objective, ratio_level, sequence_index,
        clip_low, clip_high, dual_clip, positive_weight, negative_weight, ref_logprobs, kl_coef,
        entropy_coef: as in `grpo_loss` (ratio_level="sequence" makes two passes: module docstring).
        chunk_size: kept tokens per chunk (one chunk of [chunk_size, V] logits exists at a time); None
            picks about 4M logits on the torch backend and 128M on triton.
        backend: "auto" (triton for CUDA tensors, torch otherwise), "triton" or "torch": which row passes
            turn each chunk of logits into its gradient. The matmuls are torch's either way.

    Returns:
        (loss, stats) as `grpo_loss`; the loss is differentiable in `hidden` and `weight`. Backward may
        run once: the gradients were computed in the forward and are scaled in place.
    """
    backend = resolve_backend(backend, hidden)
    check_hidden_and_weight(hidden, weight, backend)
    check_targets(targets, hidden, vocab=weight.shape[0], against="hidden")
    for name, vector in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs)):
        check_vector(name, vector, hidden, optional=True, against="hidden")
    for name, vector in (("advantages", advantages), ("weights", weights)):
        check_vector(name, vector, hidden, against="hidden")
    options = LossOptions(
        temperature=temperature,
        objective=objective,
        ratio_level=ratio_level,
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip=dual_clip,
        positive_weight=positive_weight,
        negative_weight=negative_weight,
        kl_coef=kl_coef,
        entropy_coef=entropy_coef,
    )
    check_reference(ref_logprobs, options.kl_coef)
    check_sequence_index(sequence_index, hidden, needed=options.ratio_level == "sequence", against="hidden")
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS[backend] // weight.shape[0])
    elif not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive int (or None), got {chunk_size!r}")
    loss, stats = _GRPOLossFromHidden.apply(
        hidden,
        weight,
        targets.long().contiguous(),  # the Triton row passes index it as a flat array
        old_logprobs,
        advantages,
        weights,
        ref_logprobs,
        sequence_index if options.ratio_level == "sequence" else None,
        options,
        chunk_size,
        backend,
    )
    return loss, dict(zip(stat_names(options), stats.unbind(), strict=True))
