#!/usr/bin/env bash
# The one prepared call for a lent GPU machine (H100; torch 2.11, triton 3.6, transformers, pytest and
# pytest-benchmark there; hydra-core and math-verify absent; no network). It measures the copy bandwidth,
# checks the kernels against float64 (lrm-fast-kernel-check), runs the GPU-marked tests (packed varlen
# attention among them), a few GRPO steps of a random Qwen2.5-0.5B-shaped model (benchmarks/gpu_smoke.py),
# then the kernel benchmarks, and prints one table last: shape, provider, mode, ms, GB/s, % of the measured copy
# bandwidth, peak GiB. Every stage has a time limit inside an overall budget, so the whole check ends in
# under 6 minutes; a stage that fails or runs out of time is reported, and the table is printed from
# whatever was measured.
#
#   device: run "bash benchmarks/gpu_check.sh" with carry ["benchmarks/wheels"] and timeout_s 420,
#           after `bash benchmarks/fetch_wheels.sh` here (packages the GPU machine lacks).
#   here:   PYTHON=/work/venv/bin/python bash benchmarks/gpu_check.sh --dry-run
#
# --dry-run runs every stage on this machine, without a GPU: the wheels into a scratch folder, the
# host-memory copy bandwidth, the GPU test selection (skipped without CUDA), every CPU benchmark case once
# (--benchmark-disable), then the CPU presets timed, whose JSON gives the table through the same code.
# Logs, JSON and the table go to $OUT (what comes back from the device machine) or a temporary folder.
set -u
cd "$(dirname "$0")/.."

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; fi
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
SCRATCH=$(mktemp -d /tmp/gpu_check_scratch.XXXXXX)
LOG=$OUT_DIR/gpu_check.log
# Stage limits are cut to what is left of this; `timeout -k 10` and the report add under 20 s.
BUDGET_S=330
START=$SECONDS
SUMMARY=()
export PYTHONUNBUFFERED=1

# run_stage NAME LIMIT_S COMMAND...: run COMMAND under a time limit, append its output to the log and add
# one line to the summary. SIGINT first: an interrupted pytest still writes its --benchmark-json.
run_stage() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  if ((left < 10)); then
    SUMMARY+=("$name: SKIPPED, out of time")
    return
  fi
  if ((limit > left)); then limit=$left; fi
  echo "== $name (limit ${limit}s)"
  local stage_log=$SCRATCH/$name.log t0=$SECONDS rc outcome
  timeout -s INT -k 10 "$limit" "$@" >"$stage_log" 2>&1
  rc=$?
  { echo "===== $name (rc=$rc): $*"; cat "$stage_log"; } >>"$LOG"
  case $rc in
    0) outcome=ok ;;
    5) outcome="ok, no tests selected" ;;
    124 | 137) outcome="TIMED OUT" ;;
    *) outcome="FAILED (rc=$rc)" ;;
  esac
  SUMMARY+=("$name: $outcome in $((SECONDS - t0))s | $(tail -n 1 "$stage_log" | cut -c1-100)")
  if ((rc != 0 && rc != 5)); then tail -n 15 "$stage_log" | sed 's/^/    /'; fi
}

run_stage versions 60 "$PY" -c "import sys, torch, triton
cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device'
print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, '|', cuda)"

# Pure-Python packages the machine lacks travel as wheels (benchmarks/fetch_wheels.sh).
if compgen -G "benchmarks/wheels/*.whl" >/dev/null; then
  run_stage wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SCRATCH/site" \
    --find-links benchmarks/wheels benchmarks/wheels/*.whl
  export PYTHONPATH=$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}
else
  SUMMARY+=("wheels: none in benchmarks/wheels (run benchmarks/fetch_wheels.sh and carry the folder)")
fi

# The package maps kernels/ to lrm_fast.kernels, which only an install provides (editable: no copy).
if "$PY" -c "import lrm_fast.kernels" 2>/dev/null; then
  SUMMARY+=("project: already installed")
else
  run_stage project 90 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
fi

if ((DRY_RUN)); then
  run_stage copy 60 "$PY" -m benchmarks.copy_bandwidth --gib 0.25 --out "$OUT_DIR/copy.json"
else
  run_stage copy 60 "$PY" -m benchmarks.copy_bandwidth --out "$OUT_DIR/copy.json"
fi
run_stage kernel_check 60 "$PY" -m lrm_fast.cli.kernel_check
run_stage tests 75 "$PY" -m pytest -m gpu tests -q -p no:cacheprovider

# A few GRPO steps of a random Qwen2.5-0.5B-shaped model with packed varlen attention (no flash-attn):
# rollout and update tokens/s and peak memory per attention path.
if ((DRY_RUN)); then
  run_stage smoke 60 "$PY" -m benchmarks.gpu_smoke --shape tiny --steps 1 --prompts 2 --group-size 4
else
  run_stage smoke 55 "$PY" -m benchmarks.gpu_smoke --steps 2
fi

# Benchmarks, one pytest per suite so that a suite that fails or runs out of time keeps the others' JSON.
# The GRPO loss first: it carries DESIGN's performance target; then the fused LM head + loss.
if ((DRY_RUN)); then
  run_stage bench_once 120 "$PY" -m pytest benchmarks -k cpu --benchmark-disable -q -p no:cacheprovider
  SELECT=(-k cpu)
else
  SELECT=(-m gpu)
fi
for suite in grpo_loss:130 fused_head:90 token_logprobs:80 group_advantages:30; do
  op=${suite%%:*}
  rm -f "$OUT_DIR/bench_$op.json"
  run_stage "bench_$op" "${suite##*:}" "$PY" -m pytest "benchmarks/bench_$op.py" "${SELECT[@]}" -q \
    -p no:cacheprovider --benchmark-json "$OUT_DIR/bench_$op.json"
done

echo
echo "== summary ($((SECONDS - START))s; logs and JSON in $OUT_DIR)"
printf '%s\n' "${SUMMARY[@]}"
for stage in kernel_check smoke; do
  if [[ -f $SCRATCH/$stage.log ]]; then
    echo
    cat "$SCRATCH/$stage.log"
  fi
done
echo
"$PY" -m benchmarks.report --copy "$OUT_DIR/copy.json" "$OUT_DIR"/bench_{grpo_loss,fused_head,token_logprobs,group_advantages}.json \
  | tee "$OUT_DIR/table.txt"
rm -rf "$SCRATCH"
