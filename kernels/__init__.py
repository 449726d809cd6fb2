"""Fused GRPO ops on packed response tokens: Triton kernels with plain-torch references.

Every op takes `backend="auto" | "triton" | "torch"`: auto is triton for CUDA tensors, torch otherwise.
`reference` holds the obviously-correct torch version of each op (the tests' oracle); `chunked` the
memory-frugal torch backend.
"""

import importlib
import sys


def _installed_package():
    """lrm_fast.kernels when this folder is being imported under another name and that package exists."""
    if __name__ == "lrm_fast.kernels":
        return None
    try:
        return importlib.import_module("lrm_fast.kernels")
    except ImportError:  # lrm_fast not installed: this folder is the only copy, so it loads as itself
        return None


# This folder is the package lrm_fast.kernels. With a checkout's root on sys.path (pytest, `python -m`
# there) it is also importable as a top-level `kernels`, and transformers imports that name while it
# probes for the Hugging Face `kernels` package. Running these modules a second time would define the
# custom ops again, and torch frees an op's old registration when its name is redefined: the ops held by
# lrm_fast.kernels would then read freed memory (seen as a segfault or "ValueError: vector::reserve").
# So a second name gets the same modules.
_package = _installed_package()
if _package is None:
    from .advantages import group_advantages
    from .fused_head import grpo_loss_from_hidden
    from .grpo_loss import grpo_loss
    from .logprobs import token_logprobs
    from .reference import GroupAdvantages

    __all__ = ["GroupAdvantages", "group_advantages", "grpo_loss", "grpo_loss_from_hidden", "token_logprobs"]
else:
    for _name, _module in list(sys.modules.items()):
        if _name == _package.__name__ or _name.startswith(_package.__name__ + "."):
            sys.modules[__name__ + _name[len(_package.__name__) :]] = _module
