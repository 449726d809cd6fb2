"""Input validation and backend choice shared by the public ops.

Bad input raises ValueError naming the argument. Checks that read tensor values (target ids in [0, V))
are skipped while torch.compile traces, since they would force a device sync and a graph break.
"""

import enum

import torch


class Backend(str, enum.Enum):
    """Which implementation runs an op. A str enum, so the plain strings compare equal to its members;
    members are named by their values, so a config's `backend: triton` converts by name."""

    auto = "auto"  # triton for CUDA tensors, torch otherwise
    triton = "triton"
    torch = "torch"


BACKENDS = tuple(member.value for member in Backend)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def resolve_backend(backend: Backend | str, tensor: torch.Tensor) -> Backend:
    """The backend that runs on `tensor`: Backend.triton or Backend.torch, never auto."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == Backend.auto:
        return Backend.triton if tensor.is_cuda else Backend.torch
    return Backend(backend)


def check_logits(logits: torch.Tensor, backend: str) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a 2-D [N, V] tensor, got {shape}")
    if logits.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"logits must be a floating tensor (fp32/bf16/fp16), got {logits.dtype}")
    if backend == "triton" and logits.dtype == torch.float64:
        raise ValueError("logits: float64 is not supported by the triton backend; use backend='torch'")
    if logits.shape[1] == 0:
        raise ValueError("logits has an empty vocabulary dimension (V = 0)")


def check_targets(
    targets: torch.Tensor, logits: torch.Tensor, vocab: int | None = None, against="logits"
) -> None:
    """Targets [N] with ids in [0, V): N from `logits` (or another [N, ...] tensor named by `against`),
    V from its second dimension unless `vocab` gives it."""
    n = logits.shape[0]
    vocab = logits.shape[1] if vocab is None else vocab
    if targets.dim() != 1 or targets.shape[0] != n:
        raise ValueError(f"targets must have shape [{n}] to match {against}, got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")
    if targets.device != logits.device:
        raise ValueError(f"targets is on {targets.device} but {against} is on {logits.device}")
    if n and not torch.compiler.is_compiling():
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise ValueError(f"targets holds the id {bad}, outside the vocabulary [0, {vocab})")


def check_vector(
    name: str,
    tensor: torch.Tensor | None,
    logits: torch.Tensor,
    optional: bool = False,
    against: str = "logits",
) -> None:
    if tensor is None:
        if optional:
            return
        raise ValueError(f"{name} is required")
    n = logits.shape[0]
    if tensor.dim() != 1 or tensor.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}] to match {against}, got {tuple(tensor.shape)}")
    if not tensor.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor, got {tensor.dtype}")
    if tensor.device != logits.device:
        raise ValueError(f"{name} is on {tensor.device} but {against} is on {logits.device}")


def check_sequence_index(
    sequence_index: torch.Tensor | None, logits: torch.Tensor, needed: bool, against="logits"
) -> None:
    """The [N] integer sequence labels that ratio_level="sequence" needs (`needed`); unused otherwise."""
    if sequence_index is None:
        if needed:
            raise ValueError("ratio_level='sequence' needs sequence_index, each token's sequence")
        return
    n = logits.shape[0]
    if sequence_index.dim() != 1 or sequence_index.shape[0] != n:
        raise ValueError(
            f"sequence_index must have shape [{n}] to match {against}, got {tuple(sequence_index.shape)}"
        )
    if sequence_index.dtype.is_floating_point or sequence_index.dtype.is_complex:
        raise ValueError(f"sequence_index must be an integer tensor, got {sequence_index.dtype}")
    if sequence_index.device != logits.device:
        raise ValueError(f"sequence_index is on {sequence_index.device} but {against} is on {logits.device}")


def check_hidden_and_weight(hidden: torch.Tensor, weight: torch.Tensor, backend: str) -> None:
    """hidden [N, H] and the LM head's weight [V, H]: same floating dtype, same device."""
    for name, tensor in (("hidden", hidden), ("weight", weight)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{name} must be a 2-D tensor ([N, H] / [V, H]), got {shape}")
        if tensor.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be a floating tensor (fp32/bf16/fp16), got {tensor.dtype}")
        if backend == "triton" and tensor.dtype == torch.float64:
            raise ValueError(f"{name}: float64 is not supported by the triton backend; use backend='torch'")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight has dtype {weight.dtype} but hidden has {hidden.dtype}; cast one of them")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but hidden is on {hidden.device}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must have shape [V, {hidden.shape[1]}] to match hidden, got {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0:
        raise ValueError("weight has an empty vocabulary dimension (V = 0)")


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_reference(ref_logprobs: torch.Tensor | None, kl_coef: float) -> None:
    if kl_coef and ref_logprobs is None:
        raise ValueError("ref_logprobs is required when kl_coef > 0")
