"""The torch backend: `reference.py` made memory-frugal, used on CPU and as the oracle's fast twin.

Plain-tensor launchers with the signatures of the Triton backend's (logprobs.py, grpo_loss.py,
softmax_rows.py); the one autograd.Function of each op calls one backend or the other. The logits are
processed in chunks of rows, each upcast to fp32 on its own, so no fp32 [N, V] copy ever exists. As in
the Triton kernels, the grpo_loss forward computes the logits gradient (one pass over V per chunk:
softmax statistics, per-token terms, gradient) into a buffer in the logits dtype; backward only scales it.
Extra memory: that logits-sized buffer (none with `inplace=True`: the logits are the buffer) plus a few
chunk-sized temporaries.
"""

import torch

from .policy_terms import STAT_NAMES, LossOptions, policy_terms

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


def token_logprobs_fwd(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """Returns (logp, lse), [N] each in the compute dtype (fp32; fp64 for fp64 logits)."""
    n = logits.shape[0]
    logp = torch.empty(n, dtype=_compute_dtype(logits), device=logits.device)
    lse = torch.empty_like(logp)
    for i, j in _chunks(*logits.shape):
        z = logits[i:j].to(logp.dtype) / temperature
        lse[i:j] = torch.logsumexp(z, dim=-1)
        logp[i:j] = z.gather(-1, targets[i:j].unsqueeze(-1)).squeeze(-1) - lse[i:j]
    return logp, lse


def token_logprobs_bwd(logits, targets, lse, grad_logp, temperature) -> torch.Tensor:
    """dL/dlogits [N, V] in the logits dtype from dL/dlogp [N]."""
    grad = torch.empty_like(logits)
    for i, j in _chunks(*logits.shape):
        logp_all, _ = _log_softmax_chunk(logits[i:j], temperature, lse[i:j])
        g = grad_logp[i:j].to(logp_all.dtype).unsqueeze(-1)
        dz = logp_all.exp_().mul_(-g).scatter_add_(-1, targets[i:j].unsqueeze(-1), g)
        torch.mul(dz, 1.0 / temperature, out=grad[i:j])
    return grad


def softmax_stats_fwd(logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool):
    """Pass 1 of the two-pass loss, chunk by chunk: (logp, lse, entropy or None), [N] each in the compute
    dtype, as the Triton backend's function of that name."""
    n = logits.shape[0]
    logp, lse = (torch.empty(n, dtype=_compute_dtype(logits), device=logits.device) for _ in range(2))
    entropy = torch.empty_like(logp) if with_entropy else None
    for i, j in _chunks(*logits.shape):
        logp_all, lse[i:j] = _log_softmax_chunk(logits[i:j], temperature)
        logp[i:j] = logp_all.gather(-1, targets[i:j].unsqueeze(-1)).squeeze(-1)
        if with_entropy:
            entropy[i:j] = -(logp_all.exp() * logp_all).sum(-1)
    return logp, lse, entropy


def softmax_grad(logits, targets, lse, dlogp, temperature, out, entropy=None, dentropy=None):
    """Pass 2, chunk by chunk: writes dL/dlogits into `out` ([N, V], may be `logits`) from the per-token
    coefficients, dz = dlogp * (onehot - p) - dentropy * p * (log p + H), and returns it."""
    for i, j in _chunks(*logits.shape):
        logp_all, _ = _log_softmax_chunk(logits[i:j], temperature, lse[i:j], overwrite=out is logits)
        g = dlogp[i:j].to(logp_all.dtype).unsqueeze(-1)
        if dentropy is not None:
            coef = dentropy[i:j].to(logp_all.dtype).unsqueeze(-1)
            dz = logp_all.exp().mul_(logp_all.add_(entropy[i:j].unsqueeze(-1)).mul_(coef).add_(g)).neg_()
        else:
            dz = logp_all.exp_().mul_(-g)
        dz.scatter_add_(-1, targets[i:j].unsqueeze(-1), g)
        torch.mul(dz, 1.0 / temperature, out=out[i:j])
    return out


def grpo_rows_fwd(logits, targets, old_logp, advantages, weights, ref_logp, out, options: LossOptions):
    """One chunk of rows: softmax statistics, per-token terms, and dL/dlogits written to `out`. With
    `out is logits` the chunk also serves as scratch space: one chunk-sized temporary fewer. Returns
    (logp, entropy, terms), [n] each in the compute dtype, like the Triton backend's function of that name."""
    logp_all, _ = _log_softmax_chunk(logits, options.temperature, overwrite=out is logits)
    probs = logp_all.exp()
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # mul + sum, not a fused dot: sum's pairwise reduction keeps fp32 entropy within 1e-6.
    entropy = -(probs * logp_all).sum(-1)
    terms = policy_terms(logp, entropy, old_logp, advantages, weights, ref_logp, options)
    dlogp = terms.dlogp.unsqueeze(-1)
    # dz = dlogp * (onehot - p) - dH * p * (log p + H), built in place over the chunk.
    if options.entropy_coef:
        coef = logp_all.add_(entropy.unsqueeze(-1)).mul_(terms.dentropy.unsqueeze(-1)).add_(dlogp)
        dz = probs.mul_(coef).neg_()
    else:
        dz = probs.mul_(-dlogp)
    dz.scatter_add_(-1, targets.unsqueeze(-1), dlogp)
    torch.mul(dz, 1.0 / options.temperature, out=out)
    return logp, entropy, terms


def grpo_loss_fwd(logits, targets, old_logp, advantages, weights, ref_logp, out, options: LossOptions):
    """The row passes chunk by chunk, dL/dlogits written to `out` (may be `logits`). Returns (loss, stats
    [6] fp32), the loss and stats taken over all rows at the end, as the Triton backend's function."""
    n, vocab = logits.shape
    logp, entropy = (torch.empty(n, dtype=_compute_dtype(logits), device=logits.device) for _ in range(2))
    for i, j in _chunks(n, vocab):
        rows = (_slice(t, i, j) for t in (targets, old_logp, advantages, weights, ref_logp))
        chunk = logits[i:j]
        # The same view object as the chunk when in place, so that the row passes can tell.
        chunk_out = chunk if out is logits else out[i:j]
        logp[i:j], entropy[i:j], _ = grpo_rows_fwd(chunk, *rows, chunk_out, options)
    terms = policy_terms(logp, entropy, old_logp, advantages, weights, ref_logp, options)
    return terms.loss, torch.stack([terms.stats[name] for name in STAT_NAMES])


def _slice(t: torch.Tensor | None, i: int, j: int) -> torch.Tensor | None:
    return None if t is None else t[i:j]


def scale_(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x *= scale in place (the stored gradient, by grad_output in x's dtype)."""
    return x.mul_(scale.to(x.dtype))
