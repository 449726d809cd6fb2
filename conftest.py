"""Test-wide set-up: runs before any test module imports a Triton kernel."""

import os

import torch

# Without a GPU the Triton kernels run under the interpreter; the variable must be set before
# triton.jit decorates anything, so it is set here, at collection time.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
