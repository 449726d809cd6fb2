"""Fused GRPO ops on packed response tokens: Triton kernels with plain-torch references.

Every op takes `backend="auto" | "triton" | "torch"`: auto is triton for CUDA tensors, torch otherwise.
`reference` holds the obviously-correct torch version of each op (the tests' oracle); `chunked` the
memory-frugal torch backend.
"""

import importlib
import sys

if __name__ == "lrm_fast.kernels":
    from .advantages import group_advantages
    from .fused_head import grpo_loss_from_hidden
    from .grpo_loss import grpo_loss
    from .logprobs import token_logprobs
    from .reference import GroupAdvantages

    __all__ = ["GroupAdvantages", "group_advantages", "grpo_loss", "grpo_loss_from_hidden", "token_logprobs"]
else:
    # This folder is the package lrm_fast.kernels. With a checkout's root on sys.path (pytest, `python -m`
    # there) it is also importable as a top-level `kernels`, and transformers imports that name while it
    # probes for the Hugging Face `kernels` package. Running these modules a second time would define the
    # custom ops again, and torch frees an op's old registration when its name is redefined: the ops held by
    # lrm_fast.kernels would then read freed memory (seen as a segfault or "ValueError: vector::reserve").
    # So a second name gets the same modules.
    _package = importlib.import_module("lrm_fast.kernels")
    for _name, _module in list(sys.modules.items()):
        if _name == _package.__name__ or _name.startswith(_package.__name__ + "."):
            sys.modules[__name__ + _name[len(_package.__name__) :]] = _module
