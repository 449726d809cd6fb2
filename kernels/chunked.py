"""The torch backend: `reference.py` made memory-frugal, used on CPU and as the oracle's fast twin.

The logits are processed in chunks of rows, each upcast to fp32 on its own, so no fp32 [N, V] copy
ever exists. As in the Triton kernels, grpo_loss computes its logits gradient in the forward pass (one
pass over V per chunk: softmax statistics, per-token terms, gradient) and stores it in the logits dtype;
backward only scales it. Extra memory: one logits-sized gradient buffer (none with `inplace=True`, which
writes the gradient over the logits) plus a few chunk-sized temporaries.
"""

import torch

from .policy_terms import STAT_NAMES, policy_terms

# Rows per chunk are chosen so that one fp32 chunk holds about this many elements (4 MiB): large enough
# to keep the per-chunk overhead small, small enough that a handful of temporaries stay cheap.
CHUNK_ELEMENTS = 1 << 20


def _chunks(n: int, vocab: int):
    rows = max(1, CHUNK_ELEMENTS // vocab)
    for start in range(0, n, rows):
        yield start, min(start + rows, n)


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


# exp(-inf) = 0, but 0 * -inf = NaN: masked (-inf) logits get this finite log-prob instead, so that
# p * log p and p * (log p + H) stay exactly 0 there without a masked copy of the chunk.
_MASKED_LOGP = -1e30


def _log_softmax_chunk(
    logits_chunk: torch.Tensor, temperature: float, lse: torch.Tensor | None = None, overwrite: bool = False
):
    """One upcast fp32 (or fp64) chunk of log softmax(logits / T), and its logsumexp [n]. With `overwrite`,
    an fp32 (fp64) chunk is turned into it in place instead of copied."""
    dtype = _compute_dtype(logits_chunk)
    z = logits_chunk if overwrite and logits_chunk.dtype == dtype else logits_chunk.to(dtype, copy=True)
    z.mul_(1.0 / temperature)
    if lse is None:
        lse = torch.logsumexp(z, dim=-1)
    return z.sub_(lse.unsqueeze(-1)).clamp_(min=_MASKED_LOGP), lse


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature):
        n = logits.shape[0]
        logp = torch.empty(n, dtype=_compute_dtype(logits), device=logits.device)
        lse = torch.empty_like(logp)
        for i, j in _chunks(*logits.shape):
            z = logits[i:j].to(logp.dtype) / temperature
            lse[i:j] = torch.logsumexp(z, dim=-1)
            logp[i:j] = z.gather(-1, targets[i:j].unsqueeze(-1)).squeeze(-1) - lse[i:j]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for i, j in _chunks(*logits.shape):
            logp_all, _ = _log_softmax_chunk(logits[i:j], ctx.temperature, lse[i:j])
            g = grad_logp[i:j].to(logp_all.dtype).unsqueeze(-1)
            dz = logp_all.exp_().mul_(-g).scatter_add_(-1, targets[i:j].unsqueeze(-1), g)
            torch.mul(dz, 1.0 / ctx.temperature, out=grad[i:j])
        return grad, None, None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    logp = _TokenLogprobs.apply(logits, targets.long(), temperature)
    return logp.float() if logp.dtype != torch.float64 else logp


def grpo_rows_fwd(logits, targets, old_logp, advantages, weights, ref_logp, out, *, temperature, **options):
    """One chunk of rows: softmax statistics, per-token terms, and dL/dlogits written to `out`. With
    `out is logits` the chunk also serves as scratch space: one chunk-sized temporary fewer. Returns
    (logp, entropy, terms), [n] each in the compute dtype, like the Triton backend's function of that name."""
    logp_all, _ = _log_softmax_chunk(logits, temperature, overwrite=out is logits)
    probs = logp_all.exp()
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # mul + sum, not a fused dot: sum's pairwise reduction keeps fp32 entropy within 1e-6.
    entropy = -(probs * logp_all).sum(-1)
    terms = policy_terms(logp, entropy, old_logp, advantages, weights, ref_logp, **options)
    dlogp = terms.dlogp.unsqueeze(-1)
    # dz = dlogp * (onehot - p) - dH * p * (log p + H), built in place over the chunk.
    if options["entropy_coef"]:
        coef = logp_all.add_(entropy.unsqueeze(-1)).mul_(terms.dentropy.unsqueeze(-1)).add_(dlogp)
        dz = probs.mul_(coef).neg_()
    else:
        dz = probs.mul_(-dlogp)
    dz.scatter_add_(-1, targets.unsqueeze(-1), dlogp)
    torch.mul(dz, 1.0 / temperature, out=out)
    return logp, entropy, terms


class _GRPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, old_logp, advantages, weights, ref_logp, options, inplace):
        n, vocab = logits.shape
        dtype = _compute_dtype(logits)
        logp = torch.empty(n, dtype=dtype, device=logits.device)
        entropy = torch.empty(n, dtype=dtype, device=logits.device)
        grad = logits if inplace else torch.empty_like(logits)
        for i, j in _chunks(n, vocab):
            vectors = (_slice(t, i, j) for t in (targets, old_logp, advantages, weights, ref_logp))
            chunk = logits[i:j]
            out = chunk if inplace else grad[i:j]
            logp[i:j], entropy[i:j], _ = grpo_rows_fwd(chunk, *vectors, out, **options)
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
