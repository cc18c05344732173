#!/usr/bin/env bash
# One prepared GPU check (< 5 minutes on one H100/H200): writes JSON + logs into OUTDIR.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Steps, each under its own `timeout` (a hang costs only that step; the caps add up to 290 s):
#   env      (15 s)  versions, GPU, triton_supported per dtype          -> env.json
#   pytest_parity (70 s) python -m pytest -m gpu tests/gpu/test_triton_gpu_parity.py (the compile-heavy
#                    dtype x d_head x n matrix)                         -> pytest_parity.xml, pytest_parity.log
#   pytest_rest (50 s) python -m pytest -m gpu tests, the parity file left out (scale, 2**31, model, AOT vs
#                    launched, and any other gpu-marked test)           -> pytest_rest.xml, pytest_rest.log
#   kernels  (45 s)  benchmarks/attention_stats_kernels.py --gpu-only: 8B-shaped layer, 32K tokens, bf16,
#                    Triton paths vs flash SDPA (CUDA events, 10 reps), targets beside -> kernels.json
#   default  (55 s)  the default model on CUDA: `interp report` of every analysis (run_report on the model
#                    loaded with device="cuda"), then the golden default-model scores vs their CPU values
#                                                                       -> default.json, report_default/
#   qwen     (55 s)  Qwen2.5-Coder-0.5B bf16, 32K tokens, every statistic (topk, which runs on the chunked
#                    path, timed apart): time and peak GPU memory; skipped with the reason when its package
#                    is not installed                                   -> qwen.json
# JSON is written as each part finishes, so a step that times out keeps what it measured (pytest -v logs
# name every test that ran).
# Every step appends {step, status, seconds, rc, log, json} to steps.jsonl; summary.json merges them.
# Without a CUDA GPU every GPU step is recorded as skipped and the script ends in seconds.
# Environment: PYTHON (default: python), GPU_CHECK_QWEN_N (default 32768), GPU_CHECK_FORCE=1 runs the GPU
# steps even without CUDA (to test this script: each then records its own skip).
set -u
if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR" >&2
    exit 2
fi
OUT=$1
PY=${PYTHON:-python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" || { echo "cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2
: > "$OUT/steps.jsonl"
export TOKENIZERS_PARALLELISM=false TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET

record() {  # step status seconds rc log json reason
    printf '{"step": "%s", "status": "%s", "seconds": %s, "rc": %s, "log": "%s", "json": "%s", "reason": "%s"}\n' \
        "$1" "$2" "$3" "$4" "$5" "$6" "$7" >> "$OUT/steps.jsonl"
}

step() {  # name timeout_s json_file command...
    local name=$1 limit=$2 json=$3
    shift 3
    local log="$name.log" t0 t1 rc status reason=""
    t0=$(date +%s%N)
    timeout --kill-after=5 "$limit" "$@" > "$OUT/$log" 2>&1
    rc=$?
    t1=$(date +%s%N)
    case $rc in
        0) status=ok ;;
        124|137) status=timeout; reason="over its ${limit} s limit" ;;
        *) status=failed; reason="exit code $rc (see $log)" ;;
    esac
    if [ "$status" = ok ] && [ -n "$json" ] && [ -f "$OUT/$json" ]; then  # a Python step may record a skip
        local inner
        inner=$("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r.get("status","ok") if "skipped" not in r else "skipped")' "$OUT/$json" 2>/dev/null)
        case $inner in skipped|failed) status=$inner; reason="recorded in $json" ;; esac
    fi
    local ms=$(( (t1 - t0) / 1000000 ))
    record "$name" "$status" "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))" "$rc" "$log" "$json" "$reason"
    echo "[gpu_check] $name: $status ($reason)"
}

skip() {  # name reason
    record "$1" skipped 0 0 "" "" "$2"
    echo "[gpu_check] $1: skipped ($2)"
}

step env 15 env.json "$PY" benchmarks/_gpu_check.py env "$OUT/env.json"
if [ "${GPU_CHECK_FORCE:-0}" != 1 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    for s in pytest_parity pytest_rest kernels default qwen; do skip "$s" "no CUDA GPU on this machine"; done
else
    PARITY=tests/gpu/test_triton_gpu_parity.py
    PYTEST=("$PY" -m pytest -m gpu -v -p no:cacheprovider -rs --durations=15)
    step pytest_parity 70 "" "${PYTEST[@]}" "$PARITY" --junitxml="$OUT/pytest_parity.xml"
    step pytest_rest 50 "" "${PYTEST[@]}" tests --ignore="$PARITY" --junitxml="$OUT/pytest_rest.xml"
    step kernels 45 kernels.json "$PY" benchmarks/attention_stats_kernels.py --gpu-only --gpu-out "$OUT/kernels.json"
    step default 55 default.json "$PY" benchmarks/_gpu_check.py default "$OUT/default.json" "$OUT/report_default"
    step qwen 55 qwen.json "$PY" benchmarks/_gpu_check.py qwen "$OUT/qwen.json" --n "${GPU_CHECK_QWEN_N:-32768}"
fi
"$PY" benchmarks/_gpu_check.py summary "$OUT" | tee "$OUT/summary.txt"
