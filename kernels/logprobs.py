"""token_logprobs: log pi(target) of every packed token, fused over the vocabulary.

    logp_t = z_t[target_t] - logsumexp(z_t),   z_t = logits_t / T
    d logp_t / d logits_tj = (1[j == target_t] - softmax(z_t)_j) / T

Forward reads the logits once (online logsumexp) and writes 2N fp32 (logp and the lse it keeps for
backward); backward reads them once more and writes the [N, V] gradient. No [N, V] fp32 intermediate.
The kernels are softmax_rows.py's two row passes (custom ops, opaque to torch.compile); the torch
backend's launchers with the same signatures are in chunked.py.
"""

import torch

from . import chunked
from .checks import Backend, check_logits, check_positive, check_targets, resolve_backend
from .softmax_rows import softmax_grad, softmax_stats_fwd


def token_logprobs_fwd(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """Returns (logp, lse), [N] fp32 each."""
    logp, lse, _ = softmax_stats_fwd(logits, targets, temperature, with_entropy=False)
    return logp, lse


def token_logprobs_bwd(logits, targets, lse, grad_logp, temperature) -> torch.Tensor:
    """dL/dlogits [N, V] in the logits dtype from dL/dlogp [N]."""
    grad_logp = grad_logp.float().contiguous()
    return softmax_grad(logits, targets, lse, grad_logp, temperature, out=torch.empty_like(logits))


# Per backend, its launchers (the same signatures on both).
FORWARD = {Backend.torch: chunked.token_logprobs_fwd, Backend.triton: token_logprobs_fwd}
BACKWARD = {Backend.torch: chunked.token_logprobs_bwd, Backend.triton: token_logprobs_bwd}


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature, backend):
        logp, lse = FORWARD[backend](logits, targets, temperature)
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.backend = temperature, backend
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        logits, targets, lse = ctx.saved_tensors
        grad = BACKWARD[ctx.backend](logits, targets, lse, grad_logp, ctx.temperature)
        return grad, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Log-probability of each target token under softmax(logits / temperature).

    Args:
        logits: [N, V] fp32 / bf16 / fp16 (fp64 on the torch backend); `-inf` entries mask the vocabulary.
        targets: [N] integer token ids in [0, V).
        temperature: the sampler's temperature; log-probs are those of the distribution it sampled from.
        backend: "auto" (triton for CUDA tensors, torch otherwise), "triton" or "torch".

    Returns:
        [N] fp32 log-probs (fp64 for fp64 logits), differentiable in `logits`.
    """
    backend = resolve_backend(backend, logits)
    check_logits(logits, backend)
    check_targets(targets, logits)
    check_positive("temperature", temperature)
    if backend == Backend.triton and logits.stride(-1) != 1:
        logits = logits.contiguous()
    # Contiguous targets: the kernels index them as a flat array.
    logp = _TokenLogprobs.apply(logits, targets.long().contiguous(), float(temperature), backend)
    return logp if logp.dtype == torch.float64 else logp.float()
