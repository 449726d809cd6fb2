"""The kernels folder imported under a second name (a top-level `kernels`, as transformers does while it
probes for the Hugging Face package of that name) must reuse lrm_fast.kernels: running the modules again
would redefine the custom ops and leave the ones lrm_fast.kernels holds pointing at freed registrations."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Runs in a fresh process whose sys.path starts with the checkout's root, as under pytest or `python -m`.
SCRIPT = """
import sys
import torch
import torch._library.custom_ops as custom_ops

import lrm_fast.kernels as installed
from lrm_fast.kernels import grpo_loss

ops = [name for name in custom_ops.OPDEF_TO_LIB if name.startswith("lrm_fast::")]
libraries = {name: custom_ops.OPDEF_TO_LIB[name] for name in ops}

import kernels
import kernels.grpo_loss
from transformers.utils.import_utils import is_kernels_available

print("ops", sorted(ops))
print("same package", kernels is installed)
print("same module", sys.modules["kernels.grpo_loss"] is sys.modules["lrm_fast.kernels.grpo_loss"])
print("registrations kept", all(custom_ops.OPDEF_TO_LIB[name] is libraries[name] for name in ops))
print("hf kernels found", is_kernels_available())
logits = torch.randn(6, 40, requires_grad=True)
loss, _ = grpo_loss(logits, torch.arange(6), torch.full((6,), -3.0), torch.randn(6), torch.full((6,), 1 / 6),
                    backend="triton")
loss.backward()
print("loss finite", bool(torch.isfinite(loss)) and bool(torch.isfinite(logits.grad).all()))
"""


def test_top_level_kernels_import_reuses_lrm_fast_kernels():
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'lrm_fast::grpo_loss_fwd'" in result.stdout
    assert "'lrm_fast::token_logprobs_fwd'" in result.stdout
    assert "same package True" in result.stdout
    assert "same module True" in result.stdout
    assert "registrations kept True" in result.stdout
    assert "hf kernels found False" in result.stdout
    assert "loss finite True" in result.stdout


def test_without_lrm_fast_the_folder_loads_as_itself():
    # A checkout that is not installed: `lrm_fast.kernels` does not resolve, and the top-level name must
    # still load (transformers' probe imports it whatever is installed).
    script = (
        "import sys\n"
        "sys.modules['lrm_fast.kernels'] = None\n"  # makes `import lrm_fast.kernels` fail
        "import kernels\n"
        "print('standalone', kernels.__name__, callable(kernels.grpo_loss))\n"
    )
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "standalone kernels True" in result.stdout
