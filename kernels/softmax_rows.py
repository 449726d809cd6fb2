"""Row-wise softmax passes over the vocabulary, shared by token_logprobs and grpo_loss.

With z = logits / T for one row (one token) and t its target id:

    pass 1 (`softmax_stats_fwd`): lse = logsumexp(z), logp = z_t - lse, H = lse - sum_j p_j z_j
        online over V in blocks (running max and rescaled sums), so the row is read once.
        Traffic: reads N*V logits, writes 3N fp32.
    pass 2 (`softmax_grad`): dL/dlogits_j = (dlogp * (1[j == t] - p_j) - dH * p_j * (log p_j + H)) / T
        from two per-token coefficients dlogp = dL/dlogp and dH = dL/dH.
        Traffic: reads N*V logits (skipped for rows whose two coefficients are 0), writes N*V gradient.

The gradient may be written over the logits (same pointer): each block is read before it is written, by
the same program. `-inf` logits (masked vocabulary) are valid: they get p = 0 and gradient 0.

Each launch is wrapped in a torch custom op that writes into buffers it receives, so torch.compile sees
an opaque call; the plain-tensor launchers (`softmax_stats_fwd`, `softmax_grad`, `scale_`) allocate the
buffers, skip empty inputs and call the ops. Autograd lives in the ops' callers (one autograd.Function
per public op).
"""

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _block_v(vocab: int) -> int:
    # The interpreter pays per block, not per element: let one block cover most vocabularies.
    cap = 32768 if INTERPRET else 4096
    return min(triton.next_power_of_2(vocab), cap)


@triton.jit
def to_bf16_rtne(x):
    """fp32 -> bf16 rounding to nearest even in integer arithmetic.

    GPUs round like this natively; the interpreter's plain cast truncates (up to 2x the rounding error),
    so the launchers ask for this path only under TRITON_INTERPRET. Finite inputs only.
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def row_softmax_stats(row_ptr, V, inv_temperature, WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
    """Online logsumexp of one row of z = logits * inv_temperature; entropy too when asked."""
    m = tl.full((), float("-inf"), tl.float32)  # running max
    s = tl.zeros((), tl.float32)  # sum exp(z - m)
    t = tl.zeros((), tl.float32)  # sum exp(z - m) * z
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * inv_temperature
        m_new = tl.maximum(m, tl.max(z, axis=0))
        # A row that so far holds only -inf must not produce exp(-inf - -inf) = NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        rescale = tl.exp(m - m_safe)
        e = tl.exp(z - m_safe)
        s = s * rescale + tl.sum(e, axis=0)
        if WITH_ENTROPY:
            t = t * rescale + tl.sum(e * tl.where(e > 0, z, 0.0), axis=0)
        m = m_new
    lse = tl.where(m == float("-inf"), 0.0, m) + tl.log(s)
    entropy = lse - t / s
    return lse, entropy


@triton.jit
def _softmax_stats_kernel(
    # data
    logits_ptr,  # [N, V] any float dtype
    targets_ptr,  # [N] int
    logp_ptr,  # [N] fp32 out
    lse_ptr,  # [N] fp32 out
    entropy_ptr,  # [N] fp32 out (untouched without WITH_ENTROPY)
    # shapes and strides
    V,
    stride_logits,
    # scalars
    inv_temperature,
    # constexprs
    WITH_ENTROPY: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: N * V overflows int32 at real vocabularies
    row_ptr = logits_ptr + row * stride_logits
    lse, entropy = row_softmax_stats(row_ptr, V, inv_temperature, WITH_ENTROPY, BLOCK_V)
    target = tl.load(targets_ptr + row)
    z_target = tl.load(row_ptr + target).to(tl.float32) * inv_temperature
    tl.store(logp_ptr + row, z_target - lse)
    tl.store(lse_ptr + row, lse)
    if WITH_ENTROPY:
        tl.store(entropy_ptr + row, entropy)


# Over the size budget by its arguments, listed one per line and grouped by role.
@triton.jit
def _softmax_grad_kernel(
    # data
    logits_ptr,  # [N, V] any float dtype
    grad_ptr,  # [N, V] out, logits dtype; may be logits_ptr
    targets_ptr,  # [N] int
    lse_ptr,  # [N] fp32
    entropy_ptr,  # [N] fp32 (unread without WITH_ENTROPY)
    dlogp_ptr,  # [N] fp32: dL/dlogp
    dentropy_ptr,  # [N] fp32: dL/dH (unread without WITH_ENTROPY)
    # shapes and strides
    V,
    stride_logits,
    stride_grad,
    # scalars
    inv_temperature,
    # constexprs
    WITH_ENTROPY: tl.constexpr,
    SOFTWARE_BF16: tl.constexpr,  # round bf16 output in software (interpreter only, see to_bf16_rtne)
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_logits
    grad_row_ptr = grad_ptr + row * stride_grad
    target = tl.load(targets_ptr + row)
    lse = tl.load(lse_ptr + row)
    dlogp = tl.load(dlogp_ptr + row)
    live = dlogp != 0.0
    if WITH_ENTROPY:
        dentropy = tl.load(dentropy_ptr + row)
        entropy = tl.load(entropy_ptr + row)
        live = live | (dentropy != 0.0)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        dz = tl.zeros((BLOCK_V,), tl.float32)
        # Masked-out tokens (zero weight, dropped sign) skip the read: their gradient is exactly 0.
        if live:
            z = tl.load(row_ptr + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_temperature
            logp_j = z - lse
            p = tl.exp(logp_j)
            coef = dlogp
            if WITH_ENTROPY:
                coef = coef + dentropy * tl.where(p > 0, logp_j + entropy, 0.0)
            dz = tl.where(cols == target, dlogp, 0.0) - p * coef
        dx = dz * inv_temperature
        if SOFTWARE_BF16:
            tl.store(grad_row_ptr + cols, to_bf16_rtne(dx), mask=mask)
        else:
            tl.store(grad_row_ptr + cols, dx.to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scale_kernel(x_ptr, scale_ptr, numel, BLOCK: tl.constexpr):
    # Reads the scale from memory, so "backward with grad_output == 1" costs a launch, not a pass.
    scale = tl.load(scale_ptr).to(tl.float32)
    if scale != 1.0:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        tl.store(x_ptr + offs, (x * scale).to(x_ptr.dtype.element_ty), mask=mask)


# Custom ops: each Triton launch is one opaque call to torch.compile, which traces the autograd functions
# around them. They write into buffers the launchers allocate (quack's pattern), since an op that
# mutates cannot return its own buffers and autograd lives in the callers' autograd.Function.


@torch.library.custom_op("lrm_fast::softmax_stats", mutates_args=("logp", "lse", "entropy"))
def _softmax_stats_op(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logp: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor | None,
    temperature: float,
) -> None:
    vocab = logits.shape[1]
    _softmax_stats_kernel[(logits.shape[0],)](
        logits_ptr=logits,
        targets_ptr=targets,
        logp_ptr=logp,
        lse_ptr=lse,
        entropy_ptr=lse if entropy is None else entropy,
        V=vocab,
        stride_logits=logits.stride(0),
        inv_temperature=1.0 / temperature,
        WITH_ENTROPY=entropy is not None,
        BLOCK_V=_block_v(vocab),
        num_warps=8,
    )


@torch.library.custom_op("lrm_fast::softmax_grad", mutates_args=("out",))
def _softmax_grad_op(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    dlogp: torch.Tensor,
    entropy: torch.Tensor | None,
    dentropy: torch.Tensor | None,
    temperature: float,
    out: torch.Tensor,
) -> None:
    # `out` may be `logits` itself (grpo_loss's inplace=True). The schema cannot say so, which is why
    # inplace=True is eager-only: torch.compile's functionalization would assume the two are distinct.
    vocab = logits.shape[1]
    with_entropy = dentropy is not None
    _softmax_grad_kernel[(logits.shape[0],)](
        logits_ptr=logits,
        grad_ptr=out,
        targets_ptr=targets,
        lse_ptr=lse,
        entropy_ptr=entropy if with_entropy else lse,
        dlogp_ptr=dlogp,
        dentropy_ptr=dentropy if with_entropy else dlogp,
        V=vocab,
        stride_logits=logits.stride(0),
        stride_grad=out.stride(0),
        inv_temperature=1.0 / temperature,
        WITH_ENTROPY=with_entropy,
        SOFTWARE_BF16=INTERPRET and out.dtype == torch.bfloat16,
        BLOCK_V=_block_v(vocab),
        num_warps=8,
    )


@torch.library.custom_op("lrm_fast::scale_", mutates_args=("x",))
def _scale_op(x: torch.Tensor, scale: torch.Tensor) -> None:
    block = 65536 if INTERPRET else 4096
    _scale_kernel[(triton.cdiv(x.numel(), block),)](x_ptr=x, scale_ptr=scale, numel=x.numel(), BLOCK=block)


def softmax_stats_fwd(logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool):
    """Pass 1 over contiguous `targets`. Returns (logp, lse, entropy or None), each [N] fp32."""
    n = logits.shape[0]
    logp, lse = (torch.empty(n, dtype=torch.float32, device=logits.device) for _ in range(2))
    entropy = torch.empty_like(logp) if with_entropy else None
    if n:
        _softmax_stats_op(logits, targets, logp, lse, entropy, temperature)
    return logp, lse, entropy


def softmax_grad(logits, targets, lse, dlogp, temperature, out, entropy=None, dentropy=None):
    """Pass 2: writes dL/dlogits into `out` ([N, V], may be `logits` itself) and returns it.

    `dlogp` (and `entropy`, `dentropy` when the entropy term is on) are contiguous [N] fp32."""
    if logits.shape[0]:
        _softmax_grad_op(logits, targets, lse, dlogp, entropy, dentropy, temperature, out)
    return out


def scale_(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x *= scale in place for a contiguous x and a one-element scale tensor; no pass when scale == 1."""
    if x.numel():
        _scale_op(x, scale.float())
    return x
