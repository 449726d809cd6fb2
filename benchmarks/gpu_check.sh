#!/usr/bin/env bash
# Measure lrm_fast on one CUDA GPU within a time budget. Stages, most valuable first: the kernels against
# float64 on the card (lrm-fast-kernel-check at V=151936 and at an unaligned V, and the GPU kernel tests);
# the GRPO loss and fused LM head + loss benchmarks against Liger-Kernel and torch.compile; the
# packed-attention tests; GRPO steps of a random Qwen2.5-0.5B-shaped model (benchmarks/gpu_smoke.py);
# the peak memory of one update of a random DeepSeek-R1-Distill-Qwen-1.5B-shaped model at 8k and 16k
# response tokens (benchmarks/update_at_length.py, docs/SCALE.md's estimate); the push of that model's bf16
# weights from one process to another (benchmarks/weight_broadcast.py: NCCL between two GPUs, or CUDA IPC
# on a one-GPU host, where NCCL refuses two ranks on one device); then the token_logprobs and
# group_advantages benchmarks. Last, one table: shape, provider, mode, ms,
# GB/s, % of the measured copy bandwidth, peak GiB.
#
# Needs:
#   - a CUDA GPU of compute capability 8.0 or newer, and its driver;
#   - Python 3.10+ with pip, setuptools, torch (a CUDA build), triton, transformers, numpy, pytest and
#     pytest-benchmark (PyYAML, matplotlib and tensorboard as the stages import them);
#   - a C compiler and the Python headers (Triton builds its launcher with them);
#   - benchmarks/wheels: hydra-core, omegaconf, math-verify and liger-kernel as pure-Python wheels
#     (bash benchmarks/fetch_wheels.sh, where PyPI is reachable); no network is used.
# Nothing is installed into that Python: the wheels and the project are installed with `pip --target`
# into a scratch folder put on PYTHONPATH, and the stages run from a copy of tests/ and benchmarks/.
#
#   bash benchmarks/gpu_check.sh [--budget SECONDS] [--out DIR] [--dry-run]
#
# --budget: wall-clock seconds for the whole check (default 330). Each stage runs under its own limit
#   (LIMITS below; how they were set: benchmarks/RESULTS.md), cut to what is left of the budget; a stage
#   that finds too little left is skipped, so the least valuable go first.
# --out: where results go, each as soon as it exists, so that a stage or the whole check stopped by a
#   time limit keeps what finished (default: $OUT if set, else a new temporary folder): preflight.log,
#   <stage>.log, summary.txt (a line per stage), bench_rows.jsonl (a line per benchmark case),
#   copy.json, table.txt (rewritten after each benchmark stage).
# --dry-run: every stage on a machine without a GPU (CPU presets, a tiny model): the rehearsal of a
#   host's Python environment (benchmarks/rehearse_host.sh).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
CHECKOUT=$PWD

# The header above, without its comment marks.
usage() { sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$CHECKOUT/benchmarks/gpu_check.sh"; }

BUDGET=330
DRY_RUN=0
OUT_DIR=${OUT:-}
while (($#)); do
  case $1 in
    --budget | --out) (($# >= 2)) || { echo "$1 needs a value" >&2 && exit 64; } ;;&
    --budget) BUDGET=$2 && shift 2 ;;
    --out) OUT_DIR=$2 && shift 2 ;;
    --dry-run) DRY_RUN=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) echo "unknown option: $1" >&2 && usage >&2 && exit 64 ;;
  esac
done
if [[ ! $BUDGET =~ ^[0-9]+$ ]]; then
  echo "--budget takes whole seconds, not '$BUDGET'" >&2 && exit 64
fi
PY=${PYTHON:-python3}
# Absolute: the stages run from another folder.
if [[ $PY == */* ]]; then PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY"); fi
OUT_DIR=${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_scratch.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
ROWS=$OUT_DIR/bench_rows.jsonl
rm -f "$OUT_DIR/summary.txt" "$ROWS" "$OUT_DIR/table.txt" "$OUT_DIR/copy.json"
START=$SECONDS
# Seconds kept back for the table at the end, and for `timeout -k`'s grace after a limit.
RESERVE=15
PROBLEMS=0  # stages that failed, timed out or were skipped: the exit status is 1 if any
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$SCRATCH/triton_cache

# Seconds per stage, from the measurements in benchmarks/RESULTS.md ("gpu_check.sh stage limits"): each
# stage's fixed costs (imports, collection, Triton and torch.compile compiles) measured without a GPU,
# plus the GPU work it does at the card's bandwidth, with a margin. The dry run's: its own times on 2
# CPU cores, doubled.
declare -A LIMITS=(
  [preflight]=30 [wheels]=30 [project]=30 [imports]=30 [select_tests]=30
  [kernel_check]=45 [kernel_check_unaligned]=30 [kernel_tests]=45 [copy]=20 [bench_grpo_loss]=120
  [bench_fused_head]=75 [attention_tests]=30 [smoke]=60 [memory_at_length]=75 [bench_token_logprobs]=60 [bench_group_advantages]=30
  [weight_sync]=60
)
if ((DRY_RUN)); then
  LIMITS+=([kernel_check]=60 [kernel_check_unaligned]=30 [kernel_tests]=30 [bench_grpo_loss]=90
    [bench_fused_head]=60 [smoke]=90 [memory_at_length]=60 [bench_token_logprobs]=60)
  # The dry run checks that every stage runs, not how fast: on a CPU machine shared with other jobs the
  # stages took up to three times their quiet time (RESULTS.md), so its limits are doubled once more.
  for stage in "${!LIMITS[@]}"; do LIMITS[$stage]=$((LIMITS[$stage] * 2)); done
fi

note() { echo "$1" | tee -a "$OUT_DIR/summary.txt"; }

# run_stage NAME COMMAND...: COMMAND under the stage's limit (cut to what is left of the budget), its
# output into NAME.log as it comes, one line into summary.txt. SIGINT first: pytest stops cleanly.
run_stage() {
  local name=$1 limit=${LIMITS[$1]}
  shift
  local left=$((BUDGET - (SECONDS - START) - RESERVE))
  if ((left < 10)); then
    note "$name: SKIPPED, ${left}s of the budget left"
    PROBLEMS=$((PROBLEMS + 1))
    return 124
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS rc outcome
  timeout -s INT -k 10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  case $rc in
    0) outcome=ok ;;
    5) outcome="ok, no tests selected" ;;
    124 | 137) outcome="TIMED OUT" ;;
    *) outcome="FAILED (rc=$rc)" ;;
  esac
  note "$name: $outcome in $((SECONDS - t0))s | $(tail -n 1 "$OUT_DIR/$name.log" | cut -c1-100)"
  if ((rc != 0 && rc != 5)); then
    PROBLEMS=$((PROBLEMS + 1))
    tail -n 15 "$OUT_DIR/$name.log" | sed 's/^/    /'
  fi
  return "$rc"
}

finish() {
  echo
  echo "== summary ($((SECONDS - START))s of ${BUDGET}s, $PROBLEMS stage(s) not ok; everything in $OUT_DIR)"
  cat "$OUT_DIR/summary.txt"
  for stage in kernel_check kernel_check_unaligned smoke memory_at_length; do
    if [[ -f $OUT_DIR/$stage.log ]]; then echo && cat "$OUT_DIR/$stage.log"; fi
  done
  echo
  write_table && cat "$OUT_DIR/table.txt"
  exit "$1"
}

write_table() {
  "$PY" -m benchmarks.report "$ROWS" --copy "$OUT_DIR/copy.json" >"$OUT_DIR/table.txt" 2>&1
}

# --- What the host has; stop here if something required is missing.
preflight_args=(--wheels "$CHECKOUT/benchmarks/wheels")
((DRY_RUN)) && preflight_args+=(--dry-run)
run_stage preflight "$PY" -m benchmarks.preflight "${preflight_args[@]}"
rc=$?
cat "$OUT_DIR/preflight.log"
if ((rc != 0)); then
  note "stopped: the host lacks what the check needs (MISSING lines above)"
  finish 2
fi

# --- The carried wheels and the project, next to the host's packages; the stages run from a copy of
# tests/ and benchmarks/ whose folder holds no lrm_fast/ to shadow the installed one.
SITE=$SCRATCH/wheels_site:$SCRATCH/project_site
if compgen -G "$CHECKOUT/benchmarks/wheels/*.whl" >/dev/null; then
  run_stage wheels "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SCRATCH/wheels_site" \
    "$CHECKOUT"/benchmarks/wheels/*.whl || finish 2
fi
mkdir -p "$SCRATCH/src" "$SCRATCH/run/benchmarks"
cp -r pyproject.toml README.md lrm_fast kernels conf "$SCRATCH/src/"
cp -r pyproject.toml conftest.py tests "$SCRATCH/run/"
cp benchmarks/*.py "$SCRATCH/run/benchmarks/"  # not the wheels, nor a rehearsal's environment
run_stage project "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
  --target "$SCRATCH/project_site" "$SCRATCH/src" || finish 2
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
cd "$SCRATCH/run" || finish 2
run_stage imports "$PY" -m benchmarks.preflight --imports lrm_fast.kernels lrm_fast.cli.kernel_check \
  benchmarks.copy_bandwidth benchmarks.cases benchmarks.gpu_smoke benchmarks.update_at_length \
  benchmarks.weight_broadcast || finish 2
run_stage select_tests "$PY" -m benchmarks.gpu_tests tests --out "$SCRATCH/gpu_tests.txt"
KERNEL_TESTS=() OTHER_TESTS=()
touch "$SCRATCH/gpu_tests.txt"
while read -r path; do
  if [[ $path == tests/kernels/* ]]; then KERNEL_TESTS+=("$path"); else OTHER_TESTS+=("$path"); fi
done <"$SCRATCH/gpu_tests.txt"
grep -s "^left out" "$OUT_DIR/select_tests.log" | tee -a "$OUT_DIR/summary.txt"

# run_tests NAME FILES...: the gpu-marked tests of FILES.
run_tests() {
  local name=$1
  shift
  if (($# == 0)); then
    note "$name: no test module with GPU tests imports here"
    return
  fi
  run_stage "$name" "$PY" -m pytest -m gpu -q -p no:cacheprovider "$@"
}

# bench SUITE: one benchmark suite; each case appends its row to bench_rows.jsonl when it ends.
bench() {
  local select=(-m gpu)
  ((DRY_RUN)) && select=(-k cpu)
  run_stage "bench_$1" env LRM_FAST_BENCH_ROWS="$ROWS" "$PY" -m pytest "benchmarks/bench_$1.py" "${select[@]}" \
    -q -p no:cacheprovider
  write_table
}

# --- The stages, most valuable first.
run_stage kernel_check "$PY" -m lrm_fast.cli.kernel_check --vocab 151936
run_stage kernel_check_unaligned "$PY" -m lrm_fast.cli.kernel_check --vocab 33001
run_tests kernel_tests "${KERNEL_TESTS[@]}"
if ((DRY_RUN)); then
  run_stage copy "$PY" -m benchmarks.copy_bandwidth --gib 0.25 --out "$OUT_DIR/copy.json"
else
  run_stage copy "$PY" -m benchmarks.copy_bandwidth --out "$OUT_DIR/copy.json"
fi
bench grpo_loss
bench fused_head
run_tests attention_tests "${OTHER_TESTS[@]}"
if ((DRY_RUN)); then
  run_stage smoke "$PY" -m benchmarks.gpu_smoke --shape tiny --steps 1 --prompts 2 --group-size 4
else
  run_stage smoke "$PY" -m benchmarks.gpu_smoke --steps 2
fi
# One update of 32k tokens (docs/SCALE.md's micro-batch) with the settings SCALE.md assumes: packed,
# fused head, activation checkpointing.
if ((DRY_RUN)); then
  at_length=(--shape tiny-long-v32k --lengths 64 128 --tokens 512)
else
  at_length=(--shape qwen2.5-1.5b --lengths 8192 16384 --tokens 32768)
fi
run_stage memory_at_length "$PY" -m benchmarks.update_at_length "${at_length[@]}" --sweep length \
  --paths packed-fused-ckpt --repeats 1 --out "$OUT_DIR/update_at_length.json"
# The trainer-to-worker weight push at real size (docs/SCALE.md's sync estimates).
if ((DRY_RUN)); then
  sync_args=(--device cpu --shape tiny-long-v32k --repeats 1 --copy-gib 0.05)
else
  sync_args=(--device cuda --shape qwen2.5-1.5b --repeats 3 --copy-gib 1)
fi
run_stage weight_sync "$PY" -m benchmarks.weight_broadcast "${sync_args[@]}"
bench token_logprobs
bench group_advantages
finish $((PROBLEMS > 0))
