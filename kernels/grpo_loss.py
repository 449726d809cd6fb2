"""grpo_loss: the clipped GRPO policy loss on packed response tokens, gradient computed in the forward.

Per token t, with z = logits / T, logp_t = log softmax(z_t)[target_t] and the ratio
rho = exp(clamp(logp - old, +-20)):

    pg_t    = max(-A_t * rho, -A_t * clip(rho, 1 - clip_low, 1 + clip_high))
              capped at -A_t * dual_clip when A_t < 0 and dual_clip is set
    total_t = s_t * (pg_t + kl_coef * k3(ref_t, logp_t) - entropy_coef * H_t)
    loss    = sum_t weights_t * total_t

where s_t is positive_weight for A > 0, negative_weight for A < 0 and 1 for A == 0 (sign masking; 0 drops
the token), k3(ref, logp) = e^d - d - 1 with d = ref - logp, and H_t the entropy of softmax(z_t).

Memory traffic (Triton): pass 1 reads the logits (logsumexp, target, entropy), O(N) torch math turns them
into per-token gradient coefficients (`policy_terms.py`), pass 2 reads the logits again and writes the
gradient: 2 reads + 1 write of [N, V], the floor for a loss whose backward needs softmax. Backward only
scales the stored gradient (no pass at all when grad_output == 1). Extra memory: one logits-sized gradient
buffer, or none with inplace=True, which writes the gradient over the logits (they are unusable after).
"""

import torch

from . import chunked
from .checks import check_logits, check_positive, check_targets, check_vector, resolve_backend
from .policy_terms import STAT_NAMES, policy_terms
from .softmax_rows import scale_, softmax_grad, softmax_stats_fwd


def grpo_rows_fwd(logits, targets, old_logp, advantages, weights, ref_logp, out, *, temperature, **options):
    """Both passes over rows of logits; the gradient goes to `out` (may be `logits`).

    Returns (logp, entropy, terms): [N] fp32 log-probs and entropies, and the per-token PolicyTerms.
    """
    logp, lse, entropy = softmax_stats_fwd(logits, targets, temperature, with_entropy=True)
    terms = policy_terms(logp, entropy, old_logp, advantages, weights, ref_logp, **options)
    with_entropy = options["entropy_coef"] != 0
    softmax_grad(
        logits,
        targets,
        lse,
        terms.dlogp.contiguous(),
        temperature,
        out,
        entropy=entropy if with_entropy else None,
        dentropy=terms.dentropy.contiguous() if with_entropy else None,
    )
    return logp, entropy, terms


def grpo_loss_fwd(logits, targets, old_logp, advantages, weights, ref_logp, out, *, temperature, **options):
    """Launch both passes; the gradient goes to `out` (may be `logits`). Returns (loss, stats [6])."""
    _, _, terms = grpo_rows_fwd(
        logits, targets, old_logp, advantages, weights, ref_logp, out, temperature=temperature, **options
    )
    return terms.loss, torch.stack([terms.stats[name] for name in STAT_NAMES])


@torch.library.custom_op("lrm_fast::grpo_loss_fwd", mutates_args=())
def _grpo_loss_op(
    logits: torch.Tensor,
    targets: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    temperature: float,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    positive_weight: float,
    negative_weight: float,
    kl_coef: float,
    entropy_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad = torch.empty_like(logits)
    loss, stats = grpo_loss_fwd(
        logits,
        targets,
        old_logprobs,
        advantages,
        weights,
        ref_logprobs,
        grad,
        temperature=temperature,
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip=dual_clip,
        positive_weight=positive_weight,
        negative_weight=negative_weight,
        kl_coef=kl_coef,
        entropy_coef=entropy_coef,
    )
    return loss, stats, grad


@_grpo_loss_op.register_fake
def _(logits, targets, old_logprobs, advantages, weights, ref_logprobs, *options):
    scalar = logits.new_empty((), dtype=torch.float32)
    return scalar, logits.new_empty(len(STAT_NAMES), dtype=torch.float32), torch.empty_like(logits)


@torch.library.custom_op("lrm_fast::scale_", mutates_args=("x",))
def _scale_op(x: torch.Tensor, scale: torch.Tensor) -> None:
    scale_(x, scale.float())


@_scale_op.register_fake
def _(x, scale):
    return None


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[2])
    ctx.consumed = False


def _backward(ctx, grad_loss, _grad_stats, _grad_grad):
    if ctx.consumed:
        raise RuntimeError("grpo_loss: backward ran twice; its gradient buffer is scaled in place")
    ctx.consumed = True
    (grad,) = ctx.saved_tensors
    _scale_op(grad, grad_loss)  # in place: the stored gradient becomes the returned one, no new buffer
    return (grad, *[None] * 13)


_grpo_loss_op.register_autograd(_backward, setup_context=_setup_context)


class _GRPOLossInplace(torch.autograd.Function):
    """Eager-only variant that writes the gradient over the logits: O(N) extra memory."""

    @staticmethod
    def forward(ctx, logits, targets, old_logp, advantages, weights, ref_logp, options):
        loss, stats = grpo_loss_fwd(
            logits, targets, old_logp, advantages, weights, ref_logp, logits, **options
        )
        # The kernel's writes bypass autograd; bump the version so that any other user of these logits
        # saved for backward fails loudly instead of reading gradients.
        torch.autograd.graph.increment_version(logits)
        ctx.grad = logits
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        if ctx.grad is None:
            raise RuntimeError("grpo_loss: backward ran twice; its gradient buffer is scaled in place")
        grad, ctx.grad = ctx.grad, None
        return scale_(grad, grad_loss.float()), None, None, None, None, None, None


def grpo_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    *,
    temperature: float = 1.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    positive_weight: float = 1.0,
    negative_weight: float = 1.0,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
    inplace: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped GRPO policy loss over N packed response tokens (see the module docstring for the math).

    Args:
        logits: [N, V] fp32 / bf16 / fp16 (fp64 on the torch backend); `-inf` entries mask the vocabulary.
        targets: [N] integer ids of the sampled tokens, in [0, V).
        old_logprobs: [N] fp32 log-probs of the policy that sampled, or None for on-policy
            (ratio = exp(logp - logp.detach()) = 1, gradient -A).
        advantages: [N] fp32 advantage of each token (its sequence's, broadcast).
        weights: [N] fp32 aggregation weights: mask times the global normaliser (1 / total tokens for a
            token-mean), so micro-batch losses add up to the whole-batch loss.
        temperature: the sampler's temperature; applies to the log-probs and the entropy.
        clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high].
        dual_clip: c > 1 caps the loss of tokens with A < 0 at -A * c (None: off).
        positive_weight, negative_weight: scale the whole loss of tokens with A > 0 / A < 0.
        ref_logprobs, kl_coef: k3 KL penalty to a reference policy (ref_logprobs required if kl_coef > 0).
        entropy_coef: entropy bonus (subtracted from the loss).
        inplace: write the gradient over `logits` (O(N) extra memory; logits are garbage afterwards;
            eager only). Backward may run once.
        backend: "auto" (triton for CUDA tensors, torch otherwise), "triton" or "torch".

    Returns:
        (loss, stats): scalar fp32 loss differentiable in `logits`, and detached fp32 scalars
        clip_fraction, dual_clip_fraction, approx_kl (k3 of KL(old || current)), ref_kl, entropy
        (means over kept tokens: weight and sign weight nonzero) and kept_tokens.
    """
    backend = resolve_backend(backend, logits)
    _check_inputs(logits, targets, old_logprobs, advantages, weights, ref_logprobs, backend)
    options = loss_options(
        temperature=temperature,
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip=dual_clip,
        positive_weight=positive_weight,
        negative_weight=negative_weight,
        kl_coef=kl_coef,
        entropy_coef=entropy_coef,
        ref_logprobs=ref_logprobs,
    )
    targets = targets.long()
    if logits.shape[0] == 0:
        zero = logits.float().sum() * 0.0  # keeps the graph so backward gives an empty gradient
        return zero, {name: torch.zeros((), device=logits.device) for name in STAT_NAMES}
    if backend == "torch":
        return chunked.grpo_loss(
            logits,
            targets,
            old_logprobs,
            advantages,
            weights,
            ref_logprobs=ref_logprobs,
            inplace=inplace,
            **options,
        )
    if inplace:
        if not logits.is_contiguous():
            raise ValueError("logits must be contiguous for inplace=True")
        loss, stats = _GRPOLossInplace.apply(
            logits, targets, old_logprobs, advantages, weights, ref_logprobs, options
        )
    else:
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        loss, stats, _ = _grpo_loss_op(
            logits, targets, old_logprobs, advantages, weights, ref_logprobs, **options
        )
    return loss, dict(zip(STAT_NAMES, stats.unbind(), strict=True))


def _check_inputs(logits, targets, old_logprobs, advantages, weights, ref_logprobs, backend):
    check_logits(logits, backend)
    check_targets(targets, logits)
    check_vector("old_logprobs", old_logprobs, logits, optional=True)
    check_vector("advantages", advantages, logits)
    check_vector("weights", weights, logits)
    check_vector("ref_logprobs", ref_logprobs, logits, optional=True)


def loss_options(
    *,
    temperature,
    clip_low,
    clip_high,
    dual_clip,
    positive_weight,
    negative_weight,
    kl_coef,
    entropy_coef,
    ref_logprobs,
) -> dict:
    """The scalar options of grpo_loss, checked and as plain floats (shared with grpo_loss_from_hidden)."""
    check_positive("temperature", temperature)
    for name, value in (("clip_low", clip_low), ("clip_high", clip_high), ("kl_coef", kl_coef)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if clip_low >= 1:
        raise ValueError(f"clip_low must be < 1 (the ratio's lower bound is 1 - clip_low), got {clip_low}")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    for name, value in (("positive_weight", positive_weight), ("negative_weight", negative_weight)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0 (0 drops those tokens), got {value}")
    if kl_coef and ref_logprobs is None:
        raise ValueError("ref_logprobs is required when kl_coef > 0")
    return dict(
        temperature=float(temperature),
        clip_low=float(clip_low),
        clip_high=float(clip_high),
        dual_clip=None if dual_clip is None else float(dual_clip),
        positive_weight=float(positive_weight),
        negative_weight=float(negative_weight),
        kl_coef=float(kl_coef),
        entropy_coef=float(entropy_coef),
    )
