"""grpo_loss: the clipped GRPO policy loss on packed response tokens, gradient computed in the forward.

Per token t, with z = logits / T, logp_t = log softmax(z_t)[target_t] and the ratio
rho = exp(clamp(logp - old, +-20)):

    pg_t    = max(-A_t * rho, -A_t * clip(rho, 1 - clip_low, 1 + clip_high))       objective="clipped"
              capped at -A_t * dual_clip when A_t < 0 and dual_clip is set
    pg_t    = -sg(clip(rho, 1 - clip_low, 1 + clip_high)) * A_t * logp_t          objective="cispo"

and with ratio_level="sequence" (GSPO) rho is the token's sequence's geometric-mean ratio, clipped per
sequence, with GSPO-token's gradient (policy_terms.RATIO_LEVELS);
    total_t = s_t * (pg_t + kl_coef * k3(ref_t, logp_t) - entropy_coef * H_t)
    loss    = sum_t weights_t * total_t

where s_t is positive_weight for A > 0, negative_weight for A < 0 and 1 for A == 0 (sign masking; 0 drops
the token), k3(ref, logp) = e^d - d - 1 with d = ref - logp, and H_t the entropy of softmax(z_t).

Memory traffic (Triton): pass 1 reads the logits (logsumexp, target, entropy), O(N) torch math turns them
into per-token gradient coefficients (`policy_terms.py`), pass 2 reads the logits again and writes the
gradient: 2 reads + 1 write of [N, V], the floor for a loss whose backward needs softmax; GSPO's sequence
ratio fits between the passes at no extra traffic. The torch backend makes one pass per chunk at the token
level and, since a sequence spans chunks, the same two passes at the sequence level. Backward only
scales the stored gradient (no pass at all when grad_output == 1). Extra memory: one logits-sized gradient
buffer, or none with inplace=True, which writes the gradient over the logits (they are unusable after).

Layers: the row kernels and their custom ops (softmax_rows.py) -> the launchers here (chunked.py's
for the torch backend) -> `_GRPOLoss`, the one autograd.Function of both backends and of inplace=True
-> `grpo_loss`, which checks the inputs and builds the `LossOptions` every layer below receives.
"""

import torch

from . import chunked, softmax_rows
from .checks import (
    Backend,
    check_logits,
    check_reference,
    check_sequence_index,
    check_targets,
    check_vector,
    resolve_backend,
)
from .policy_terms import LossOptions, policy_terms, stat_names, take_stored_grads

# Per backend, its launchers (the same signatures on both): pass 1 (softmax statistics) and pass 2 (the
# gradient from per-token coefficients) over rows of logits, and the in-place scale of a stored gradient.
STATS = {Backend.torch: chunked.softmax_stats_fwd, Backend.triton: softmax_rows.softmax_stats_fwd}
GRAD = {Backend.torch: chunked.softmax_grad, Backend.triton: softmax_rows.softmax_grad}
SCALE = {Backend.torch: chunked.scale_, Backend.triton: softmax_rows.scale_}


def grad_pass(backend, logits, targets, lse, entropy, dlogp, dentropy, out, options: LossOptions):
    """Pass 2 over rows of logits: dL/dlogits from the per-token coefficients, written to `out`."""
    with_entropy = options.entropy_coef != 0
    GRAD[backend](
        logits,
        targets,
        lse,
        dlogp.contiguous(),
        options.temperature,
        out,
        entropy=entropy if with_entropy else None,
        dentropy=dentropy.contiguous() if with_entropy else None,
    )


def two_pass_rows_fwd(backend, logits, targets, vectors, out, options: LossOptions, sequence_index=None):
    """Both passes over rows of logits; the gradient goes to `out` (may be `logits`). `vectors` are
    (old_logp, advantages, weights, ref_logp).

    Returns (logp, entropy, terms): [N] log-probs and entropies in the compute dtype, and the PolicyTerms.
    """
    logp, lse, entropy = STATS[backend](logits, targets, options.temperature, with_entropy=True)
    terms = policy_terms(logp, entropy, *vectors, options, sequence_index)
    grad_pass(backend, logits, targets, lse, entropy, terms.dlogp, terms.dentropy, out, options)
    return logp, entropy, terms


def triton_rows_fwd(logits, targets, old_logp, advantages, weights, ref_logp, out, options: LossOptions):
    """The Triton backend's row passes (chunked.grpo_rows_fwd's signature): always the two passes."""
    vectors = (old_logp, advantages, weights, ref_logp)
    return two_pass_rows_fwd(Backend.triton, logits, targets, vectors, out, options)


# The token-level row passes over a chunk of logits (used by fused_head.py too): the torch backend's one
# pass per chunk, Triton's two.
ROW_PASSES = {Backend.torch: chunked.grpo_rows_fwd, Backend.triton: triton_rows_fwd}


def grpo_loss_fwd(backend, logits, targets, vectors, sequence_index, out, options: LossOptions):
    """The whole loss forward over all rows; the gradient goes to `out` (may be `logits`). Returns
    (loss, stats), stats stacked in `stat_names(options)`'s order."""
    if backend == Backend.torch and options.ratio_level == "token":
        return chunked.grpo_loss_fwd(logits, targets, *vectors, out, options)
    _, _, terms = two_pass_rows_fwd(backend, logits, targets, vectors, out, options, sequence_index)
    return terms.loss, torch.stack([terms.stats[name] for name in stat_names(options)])


class _GRPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        logits,
        targets,
        old_logp,
        advantages,
        weights,
        ref_logp,
        sequence_index,
        options,
        backend,
        inplace,
    ):
        # In place, the launches' writes bump the logits' version (the custom ops declare the mutation),
        # so any other user that saved these logits for backward fails loudly instead of reading gradients.
        grad = logits if inplace else torch.empty_like(logits)
        vectors = (old_logp, advantages, weights, ref_logp)
        loss, stats = grpo_loss_fwd(backend, logits, targets, vectors, sequence_index, grad, options)
        ctx.stored_grads, ctx.backend = (grad,), backend
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        (grad,) = take_stored_grads(ctx, "grpo_loss")
        # In place: the stored gradient becomes the returned one, no new [N, V] buffer.
        return SCALE[ctx.backend](grad, grad_loss), *[None] * 9


# Long for its signature and argument docs: the keyword contract of DESIGN.md, spelled out.
def grpo_loss(
    logits: torch.Tensor,
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
        objective: "clipped" (PPO's clipped ratio) or "cispo" (-sg(clip(ratio)) * A * logp: the clipped,
            detached ratio weighs the log-prob, so every token keeps a gradient; MiniMax-M1).
        ratio_level: "token" (each token's ratio) or "sequence" (GSPO: each sequence's geometric-mean
            ratio over its kept tokens, clipped per sequence; "clipped" only, no dual_clip).
        sequence_index: [N] integer label of each token's sequence, needed with ratio_level="sequence":
            a sequence is a run of consecutive tokens with equal labels (rows when padded, packed
            sequences); one segment sum, no host sync.
        clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high] (clip_low < 1; with
            "cispo" up to 1, no lower bound).
        dual_clip: c > 1 caps the loss of tokens with A < 0 at -A * c (None: off; "clipped" only).
        positive_weight, negative_weight: scale the whole loss of tokens with A > 0 / A < 0.
        ref_logprobs, kl_coef: k3 KL penalty to a reference policy (ref_logprobs required if kl_coef > 0).
        entropy_coef: entropy bonus (subtracted from the loss).
        inplace: write the gradient over `logits` (O(N) extra memory; logits are garbage afterwards;
            eager only). Backward may run once.
        backend: "auto" (triton for CUDA tensors, torch otherwise), "triton" or "torch".

    Returns:
        (loss, stats): scalar fp32 loss differentiable in `logits`, and detached fp32 scalars
        clip_fraction, dual_clip_fraction, approx_kl (k3 of KL(old || current)), ref_kl, entropy
        (means over kept tokens: weight and sign weight nonzero) and kept_tokens; with
        ratio_level="sequence" also seq_ratio_mean, seq_ratio_min, seq_ratio_max, seq_clip_fraction (over
        the sequences with kept tokens) and kept_sequences.
    """
    backend = resolve_backend(backend, logits)
    _check_inputs(logits, targets, old_logprobs, advantages, weights, ref_logprobs, backend)
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
    check_sequence_index(sequence_index, logits, needed=options.ratio_level == "sequence")
    if logits.shape[0] == 0:
        zero = logits.float().sum() * 0.0  # keeps the graph so backward gives an empty gradient
        return zero, {name: torch.zeros((), device=logits.device) for name in stat_names(options)}
    if backend == Backend.triton and inplace and not logits.is_contiguous():
        raise ValueError("logits must be contiguous for inplace=True")  # the scale kernel reads it flat
    if backend == Backend.triton and logits.stride(-1) != 1:
        logits = logits.contiguous()
    # Contiguous targets: the kernels index them as a flat array.
    vectors = (targets.long().contiguous(), old_logprobs, advantages, weights, ref_logprobs)
    index = sequence_index if options.ratio_level == "sequence" else None
    loss, stats = _GRPOLoss.apply(logits, *vectors, index, options, backend, inplace)
    return loss, dict(zip(stat_names(options), stats.unbind(), strict=True))


def _check_inputs(logits, targets, old_logprobs, advantages, weights, ref_logprobs, backend):
    check_logits(logits, backend)
    check_targets(targets, logits)
    check_vector("old_logprobs", old_logprobs, logits, optional=True)
    check_vector("advantages", advantages, logits)
    check_vector("weights", weights, logits)
    check_vector("ref_logprobs", ref_logprobs, logits, optional=True)
