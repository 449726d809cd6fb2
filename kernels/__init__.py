"""Fused GRPO ops on packed response tokens: Triton kernels with plain-torch references.

Every op takes `backend="auto" | "triton" | "torch"`: auto is triton for CUDA tensors, torch otherwise.
`reference` holds the obviously-correct torch version of each op (the tests' oracle); `chunked` the
memory-frugal torch backend.
"""

from .advantages import group_advantages
from .fused_head import grpo_loss_from_hidden
from .grpo_loss import grpo_loss
from .logprobs import token_logprobs
from .reference import GroupAdvantages

__all__ = ["GroupAdvantages", "group_advantages", "grpo_loss", "grpo_loss_from_hidden", "token_logprobs"]
