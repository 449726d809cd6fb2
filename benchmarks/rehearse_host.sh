#!/usr/bin/env bash
# Rehearse benchmarks/gpu_check.sh without a GPU, in a Python environment built like a GPU host's: the
# host's packages that the stages import and nothing else, so that whatever else the check needs must
# come from the carried wheels (benchmarks/wheels, fetched here first), as it must on the host. Then
# `gpu_check.sh --dry-run` in it.
#
#   bash benchmarks/rehearse_host.sh [gpu_check.sh options, e.g. --budget 400 --out DIR]
#
# The environment (VENV, default benchmarks/.rehearsal-venv, git-ignored; kept for the next run):
# Python 3.11, torch 2.13.0 (its CPU build), triton 3.6.0, transformers 5.17, numpy, setuptools, PyYAML,
# matplotlib, tensorboard, pytest, pytest-benchmark, and what they depend on. Where a host differs
# (Python 3.12, torch 2.11 with CUDA), this machine has no such build to offer.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' benchmarks/rehearse_host.sh
  exit 0
fi
VENV=${VENV:-benchmarks/.rehearsal-venv}
PY=${REHEARSAL_PYTHON:-python3.11}

HOST_PACKAGES=(
  # +cpu: only the local CPU build matches, so pip can never fall back to a multi-GB CUDA build.
  torch==2.13.0+cpu
  triton==3.6.0
  "transformers==5.17.*"
  # Triton 3.6's interpreter (the dry run's Triton cases; never used on a GPU) converts one-element
  # arrays to scalars, which numpy 2.4 refuses.
  "numpy<2.4"
  setuptools
  PyYAML
  matplotlib
  tensorboard
  pytest
  pytest-benchmark
)
# Packages a host lacks: they must reach the check through the carried wheels only.
CARRIED=(hydra omegaconf math_verify latex2sympy2_extended liger_kernel)

bash benchmarks/fetch_wheels.sh
if [[ ! -x $VENV/bin/python ]]; then "$PY" -m venv "$VENV"; fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${HOST_PACKAGES[@]}"
"$VENV/bin/python" - "${CARRIED[@]}" <<'EOF'
import importlib.util
import sys

import torch

present = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is not None]
if present or torch.version.cuda is not None:
    sys.exit(f"not a host-like environment: {present or ''} {torch.version.cuda or ''}")
EOF
"$VENV/bin/python" -m pip list --format=freeze --disable-pip-version-check
PYTHON=$VENV/bin/python bash benchmarks/gpu_check.sh --dry-run "$@"
