"""Fused GRPO ops on packed response tokens: Triton kernels with plain-torch references.

Every op takes `backend="auto" | "triton" | "torch"`: auto is triton for CUDA tensors, torch otherwise.
`reference` holds the obviously-correct torch version of each op (the tests' oracle); `chunked` the
memory-frugal torch backend.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _spec_outside_checkout(name: str):
    """The spec Python would find for the top-level `name` if this checkout's root were not on sys.path."""
    root = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = [entry for entry in sys.path if os.path.realpath(entry or os.curdir) != root]
    return importlib.machinery.PathFinder.find_spec(name, path)


if __name__ == "lrm_fast.kernels":
    from .advantages import group_advantages
    from .checks import Backend
    from .fused_head import grpo_loss_from_hidden
    from .grpo_loss import grpo_loss
    from .logprobs import token_logprobs
    from .reference import GroupAdvantages

    __all__ = [
        "Backend",
        "GroupAdvantages",
        "group_advantages",
        "grpo_loss",
        "grpo_loss_from_hidden",
        "token_logprobs",
    ]
else:
    # This folder is the package lrm_fast.kernels (a package-dir mapping). With a checkout's root on
    # sys.path (pytest, `python -m`, torchrun) it is also found as a top-level `kernels`, a name that
    # belongs to the Hugging Face package transformers imports. Under that name the folder steps aside:
    # the installed package takes this module's place in sys.modules, and the import statement returns
    # whatever is there once this module has run. Where none is installed, this stays an empty package
    # without submodules: transformers' probe finds no version (so no hub kernels), and none of our op
    # registrations runs a second time (torch frees an op's registration when its name is defined again,
    # leaving the ops lrm_fast.kernels holds pointing at freed memory).
    _spec = _spec_outside_checkout(__name__)
    if _spec is None:
        __path__ = []
    else:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules[__name__] = _module
        try:
            _spec.loader.exec_module(_module)
        except BaseException:
            del sys.modules[__name__]
            raise
