"""token_logprobs: log pi(target) of every packed token, fused over the vocabulary.

    logp_t = z_t[target_t] - logsumexp(z_t),   z_t = logits_t / T
    d logp_t / d logits_tj = (1[j == target_t] - softmax(z_t)_j) / T

Forward reads the logits once (online logsumexp) and writes 2N fp32 (logp and the lse it keeps for
backward); backward reads them once more and writes the [N, V] gradient. No [N, V] fp32 intermediate.
Registered as torch custom ops so that torch.compile treats the Triton launches as opaque calls.
"""

import torch

from . import chunked
from .checks import check_logits, check_positive, check_targets, resolve_backend
from .softmax_rows import softmax_grad, softmax_stats_fwd


@torch.library.custom_op("lrm_fast::token_logprobs_fwd", mutates_args=())
def _token_logprobs_fwd(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    logp, lse, _ = softmax_stats_fwd(logits, targets, temperature, with_entropy=False)
    return logp, lse


@_token_logprobs_fwd.register_fake
def _(logits, targets, temperature):
    return logits.new_empty(logits.shape[0], dtype=torch.float32), logits.new_empty(
        logits.shape[0], dtype=torch.float32
    )


@torch.library.custom_op("lrm_fast::token_logprobs_bwd", mutates_args=())
def _token_logprobs_bwd(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    grad_logp: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    grad_logp = grad_logp.float().contiguous()
    return softmax_grad(logits, targets, lse, grad_logp, temperature, out=torch.empty_like(logits))


@_token_logprobs_bwd.register_fake
def _(logits, targets, lse, grad_logp, temperature):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, targets, temperature = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.temperature = temperature


def _backward(ctx, grad_logp, _grad_lse):
    logits, targets, lse = ctx.saved_tensors
    return _token_logprobs_bwd(logits, targets, lse, grad_logp, ctx.temperature), None, None


_token_logprobs_fwd.register_autograd(_backward, setup_context=_setup_context)


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
        [N] fp32 log-probs, differentiable in `logits`.
    """
    backend = resolve_backend(backend, logits)
    check_logits(logits, backend)
    check_targets(targets, logits)
    check_positive("temperature", temperature)
    targets = targets.long()
    if backend == "torch":
        return chunked.token_logprobs(logits, targets, temperature=temperature)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    return _token_logprobs_fwd(logits, targets.contiguous(), float(temperature))[0]
