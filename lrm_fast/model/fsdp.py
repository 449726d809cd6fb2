"""FSDP2 for the policy, applied by one free function, and the helpers the update and sampling need."""

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard


def apply_fsdp(model: torch.nn.Module, bf16: bool) -> torch.nn.Module:
    """FSDP2 over every decoder block, then the root (embeddings, final norm, head)."""
    # Params stay fp32 for the optimizer; compute and all-gathers in bf16 halve traffic, gradients are
    # reduced in fp32 so that small updates are not rounded away.
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs = {"mp_policy": mp} if mp else {}
    for block in model.model.layers:
        # One all-gather per block bounds the unsharded memory to a block at a time.
        fully_shard(block, **kwargs)
    # The root keeps embeddings and the tied head together in one group (they share a weight).
    fully_shard(model, **kwargs)
    return model


def gradient_scale() -> float:
    """Factor on each rank's loss before backward so that FSDP's gradient average is a sum.

    The loss is already a global sum over ranks (global normalisers), so gradients must add up; FSDP
    averages them. Scaling the loss by the world size works with every backend (gloo has no pre-scaled
    sum reduction).
    """
    return float(dist.get_world_size()) if dist.is_initialized() else 1.0


@contextmanager
def gathered_for_generation(model: torch.nn.Module):
    """Keep FSDP2 parameters unsharded while sampling.

    Sampling runs a different number of forward passes on each rank (each stops when its own responses
    end), so per-forward all-gathers would deadlock; one explicit unshard per rollout avoids that and is
    cheaper too. A no-op for a model without FSDP.
    """
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield model
    finally:
        for module in modules:
            module.reshard()
            # FSDP2 keeps the root unsharded after forward (its backward comes first); blocks reshard.
            module.set_reshard_after_forward(module is not model, recurse=False)
