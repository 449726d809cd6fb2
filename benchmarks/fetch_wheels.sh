#!/usr/bin/env bash
# Fetch, as pure-Python wheels, the packages that benchmarks/gpu_check.sh needs beyond a GPU host's own
# (hydra-core, omegaconf, math-verify and their pure-Python dependencies, liger-kernel), into
# benchmarks/wheels/ (git-ignored). gpu_check.sh installs them from that folder, without a network, into
# a scratch folder on PYTHONPATH; copy the folder to the host with the checkout. Run where PyPI is
# reachable:
#
#   bash benchmarks/fetch_wheels.sh            # PYTHON=... picks the interpreter whose pip is used
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

# The versions of the CPU install, known to work together. hydra-core pins antlr4 4.9.*, and 4.9.3 is
# published only as a source archive: `pip wheel` builds it (pure Python) where `pip download` would not.
# liger-kernel is the optional `liger` extra: it brings Liger-Kernel's GRPO loss into the benchmark.
PACKAGES=(
  hydra-core==1.3.8
  omegaconf==2.3.1
  antlr4-python3-runtime==4.9.3
  math-verify==0.9.0
  latex2sympy2_extended==1.11.0
  liger-kernel==0.8.5
)

rm -rf wheels
"$PY" -m pip wheel -q --no-deps --wheel-dir wheels "${PACKAGES[@]}"
# The host may run another Python version: only "none-any" wheels are sure to install there.
for wheel in wheels/*.whl; do
  if [[ $wheel != *-none-any.whl ]]; then
    echo "not a pure-Python wheel, cannot travel: $wheel" >&2
    exit 1
  fi
done
du -ch wheels/*.whl
