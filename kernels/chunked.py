"""The torch backend: `reference.py` made memory-frugal, used on CPU and as the oracle's fast twin.

The logits are processed in chunks of rows, each upcast to fp32 on its own, so no fp32 [N, V] copy
ever exists. As in the Triton kernels, grpo_loss computes its logits gradient in the forward pass (one
pass over V per chunk: softmax statistics, per-token terms, gradient) and stores it in the logits dtype;
backward only scales it. Extra memory: one logits-sized gradient buffer (none with `inplace=True`, which
writes the gradient over the logits) plus a few chunk-sized temporaries.
"""

import torch

from .policy_terms import STAT_NAMES, policy_terms

# Rows per chunk are chosen so that one fp32 chunk holds about this many elements (8 MiB): large enough
# to keep the per-chunk overhead small, small enough that a handful of temporaries stay cheap.
CHUNK_ELEMENTS = 1 << 21


def _chunks(n: int, vocab: int):
    rows = max(1, CHUNK_ELEMENTS // vocab)
    for start in range(0, n, rows):
        yield start, min(start + rows, n)


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


def _softmax_chunk(logits_chunk: torch.Tensor, targets_chunk: torch.Tensor, temperature: float):
    """Upcast one chunk and return (log_softmax [n, V], p [n, V], logp of the targets [n])."""
    z = logits_chunk.to(_compute_dtype(logits_chunk)) / temperature
    logp_all = z - torch.logsumexp(z, dim=-1, keepdim=True)
    logp = logp_all.gather(-1, targets_chunk.unsqueeze(-1)).squeeze(-1)
    return logp_all, logp_all.exp(), logp


def _entropy(logp_all: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    # -inf logits have p = 0 and contribute 0, not 0 * -inf = NaN.
    return -(probs * torch.where(probs > 0, logp_all, 0.0)).sum(-1)


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature):
        logp = torch.empty(logits.shape[0], dtype=_compute_dtype(logits), device=logits.device)
        for i, j in _chunks(*logits.shape):
            z = logits[i:j].to(logp.dtype) / temperature
            logp[i:j] = z.gather(-1, targets[i:j].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)
        ctx.save_for_backward(logits, targets, logp)
        ctx.temperature = temperature
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        logits, targets, _ = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for i, j in _chunks(*logits.shape):
            _, probs, _ = _softmax_chunk(logits[i:j], targets[i:j], ctx.temperature)
            g = grad_logp[i:j].to(probs.dtype).unsqueeze(-1)
            dz = (-g * probs).scatter_add(-1, targets[i:j].unsqueeze(-1), g)
            grad[i:j] = dz / ctx.temperature
        return grad, None, None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    logp = _TokenLogprobs.apply(logits, targets.long(), temperature)
    return logp.float() if logp.dtype != torch.float64 else logp


class _GRPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, old_logp, advantages, weights, ref_logp, options, inplace):
        n, vocab = logits.shape
        dtype = _compute_dtype(logits)
        logp = torch.empty(n, dtype=dtype, device=logits.device)
        entropy = torch.empty(n, dtype=dtype, device=logits.device)
        grad = logits if inplace else torch.empty_like(logits)
        for i, j in _chunks(n, vocab):
            logp_all, probs, logp_chunk = _softmax_chunk(logits[i:j], targets[i:j], options["temperature"])
            logp[i:j] = logp_chunk
            entropy[i:j] = _entropy(logp_all, probs)
            terms = policy_terms(
                logp[i:j],
                entropy[i:j],
                *(_slice(t, i, j) for t in (old_logp, advantages, weights, ref_logp)),
                **_term_options(options),
            )
            dlogp = terms.dlogp.unsqueeze(-1)
            log_probs_h = torch.where(probs > 0, logp_all + entropy[i:j].unsqueeze(-1), 0.0)
            dz = -probs * (dlogp + terms.dentropy.unsqueeze(-1) * log_probs_h)
            dz = dz.scatter_add(-1, targets[i:j].unsqueeze(-1), dlogp)
            grad[i:j] = dz / options["temperature"]
        terms = policy_terms(logp, entropy, old_logp, advantages, weights, ref_logp, **_term_options(options))
        ctx.grad = grad
        stats = [terms.stats[name] for name in STAT_NAMES]
        ctx.mark_non_differentiable(*stats)
        return (terms.loss, *stats)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if ctx.grad is None:
            raise RuntimeError("grpo_loss: backward ran twice; its gradient buffer is scaled in place")
        grad, ctx.grad = ctx.grad, None
        return grad.mul_(grad_loss.to(grad.dtype)), None, None, None, None, None, None, None


def _slice(t: torch.Tensor | None, i: int, j: int) -> torch.Tensor | None:
    return None if t is None else t[i:j]


def _term_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k != "temperature"}


def grpo_loss(logits, targets, old_logprobs, advantages, weights, *, inplace: bool = False, **options):
    """Chunked torch grpo_loss; same arguments and result as `reference.grpo_loss`."""
    loss, *stats = _GRPOLoss.apply(
        logits,
        targets.long(),
        old_logprobs,
        advantages,
        weights,
        options.pop("ref_logprobs"),
        options,
        inplace,
    )
    return loss, dict(zip(STAT_NAMES, stats, strict=True))
