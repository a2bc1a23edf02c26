#!/usr/bin/env bash
# GPU check of art_fast on a fresh GPU machine (DESIGN §7; issue 6), in well under 10 minutes:
#
#   1. env          versions of the GPU, driver, Python, torch, triton, nvcc, compute-sanitizer
#   2. build        the extension with its CUDA kernels for sm_90 (TORCH_CUDA_ARCH_LIST=9.0,
#                   MAX_JOBS=16, ART_FAST_CUDA=1: a failure to build them is an error)
#   3. gpu_tests    pytest -m gpu (the op tests on the cuda and triton backends, the CUDA
#                   paper-shape tests); tests that need open_clip / decord skip when absent
#   4. memcheck     compute-sanitizer --tool memcheck over a small driver of every CUDA op
#   5. racecheck    compute-sanitizer --tool racecheck over the same driver
#   6. bench_ops    benchmarks/bench_ops.py --device cuda
#   7. bench_train  benchmarks/bench_train.py --device cuda --configs tiny (needs open_clip)
#
# Usage: benchmarks/gpu_check.sh OUTDIR
# Writes OUTDIR/<step>.log for each step, OUTDIR/pytest_gpu.xml, OUTDIR/bench_ops/,
# OUTDIR/bench_train/ and OUTDIR/summary.md (one line per step: PASS, FAIL, TIMEOUT or SKIP,
# seconds, note). Every step runs under `timeout`; a failed step does not stop the next ones.
# Exit status: 0 when no step failed or timed out, 1 otherwise, 2 for bad usage.
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET (seconds for the whole run, default
# 450), GPU_CHECK_SKIP_BUILD=1 (use the extension already built in the tree).
set -u -o pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit "${1:-2}"
}

if [ $# -ne 1 ]; then
  echo "gpu_check.sh: expected one argument, OUTDIR" >&2
  usage 2
fi
case "$1" in
  -h | --help) usage 0 ;;
  -*) echo "gpu_check.sh: unknown option $1" >&2; usage 2 ;;
esac

OUT=$1
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-450}
START=$SECONDS

NAMES=()
STATUS=()
TIMES=()
NOTES=()

record() {  # name status seconds note
  NAMES+=("$1")
  STATUS+=("$2")
  TIMES+=("$3")
  NOTES+=("$4")
  printf '[gpu_check] %-12s %-7s %4ss  %s\n' "$1" "$2" "$3" "$4"
}

# run_step NAME SECONDS CMD...: runs CMD with its output in OUT/NAME.log, under a timeout of
# min(SECONDS, what is left of the budget).
run_step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 10 ]; then
    record "$name" TIMEOUT 0 "not run: the ${BUDGET}s budget is spent"
    return 1
  fi
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
  local t0=$SECONDS rc
  echo "\$ $*" >"$OUT/$name.log"
  timeout --kill-after=10 "$limit" "$@" >>"$OUT/$name.log" 2>&1
  rc=$?
  local dt=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    record "$name" PASS "$dt" "$(tail -n 1 "$OUT/$name.log" | cut -c1-100)"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    record "$name" TIMEOUT "$dt" "killed after ${limit}s (see $name.log)"
  else
    record "$name" FAIL "$dt" "exit $rc (see $name.log): $(tail -n 1 "$OUT/$name.log" | cut -c1-80)"
  fi
  return "$rc"
}

find_sanitizer() {
  local c
  if command -v compute-sanitizer >/dev/null 2>&1; then
    command -v compute-sanitizer
    return 0
  fi
  for c in "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" \
    "${CUDA_HOME:-/nonexistent}/compute-sanitizer/compute-sanitizer" \
    /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
    /usr/local/cuda-*/bin/compute-sanitizer /usr/local/cuda-*/compute-sanitizer/compute-sanitizer; do
    if [ -x "$c" ]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

# ---- 1. env ---------------------------------------------------------------------------------
# shellcheck disable=SC2329  # run through `bash -c` (timeout cannot run a shell function)
env_info() {
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" - <<'PYEOF'
import importlib.metadata as md
import platform
import torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("cuda available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for pkg in ("triton", "numpy", "open_clip_torch", "decord", "decord2", "av"):
    try:
        print(pkg, md.version(pkg))
    except md.PackageNotFoundError:
        print(pkg, "absent")
PYEOF
  command -v nvcc && nvcc --version | tail -n 2
  echo "compute-sanitizer: $(find_sanitizer || echo absent)"
}
export PY
export -f env_info find_sanitizer
run_step env 30 bash -c env_info

HAVE_GPU=0
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  HAVE_GPU=1
fi

# ---- 2. build -------------------------------------------------------------------------------
BUILD_OK=1
if [ "${GPU_CHECK_SKIP_BUILD:-0}" = "1" ]; then
  record build SKIP 0 "GPU_CHECK_SKIP_BUILD=1: using the extension already built"
else
  run_step build 170 env TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 ART_FAST_CUDA=1 \
    "$PY" setup.py build_ext --inplace || BUILD_OK=0
fi

# ---- 3-7. GPU steps ----------------------------------------------------------------------------
if [ "$HAVE_GPU" -ne 1 ]; then
  for s in gpu_tests memcheck racecheck bench_ops bench_train; do
    record "$s" FAIL 0 "no CUDA device visible to torch"
  done
elif [ "$BUILD_OK" -ne 1 ]; then
  for s in gpu_tests memcheck racecheck bench_ops bench_train; do
    record "$s" FAIL 0 "not run: the build failed (see build.log)"
  done
else
  run_step gpu_tests 110 env ART_FAST_REQUIRE_CUDA_BUILD=1 "$PY" -m pytest -m gpu tests -q -rs \
    -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml"

  # A small driver of every CUDA op, forward and backward, over the kernels' paths.
  cat >"$OUT/sanitize_ops.py" <<'PYEOF'
import torch
import art_fast

dev = "cuda"
for dt in (torch.float32, torch.bfloat16):
    def leaf(*shape):
        return torch.randn(*shape, device=dev, dtype=dt).requires_grad_()
    q, k, v = leaf(1, 2, 5, 40), leaf(3, 2, 37, 40), leaf(3, 2, 37, 40)
    out, w = art_fast.cross_attention(q.expand(3, -1, -1, -1), k, v, return_weights=True,
                                      backend="cuda")
    (out.float().sum() + w.float().square().sum()).backward()
    for n, kk in ((50, 5), (1100, 9)):
        s, vals = leaf(2, 3, n), leaf(2, n, 7)
        pooled, idx, wt = art_fast.topk_regions(s, vals, kk, backend="cuda")
        (pooled.float().sum() + wt.float().sum()).backward()
    for m, n in ((6, 5), (70, 90)):
        a, c = leaf(4, m, 33), leaf(4, n, 33)
        t = torch.randint(0, n, (4, m), device=dev)
        t[0, 0] = -100
        art_fast.info_nce(a, c, t, backend="cuda").backward()
        art_fast.info_nce(a, c, t, reduction="none", backend="cuda").sum().backward()
torch.cuda.synchronize()
print("sanitize_ops: every CUDA op ran forward and backward")
PYEOF
  if SAN=$(find_sanitizer); then
    run_step memcheck 40 "$SAN" --tool memcheck --error-exitcode 1 "$PY" "$OUT/sanitize_ops.py"
    run_step racecheck 40 "$SAN" --tool racecheck --error-exitcode 1 "$PY" "$OUT/sanitize_ops.py"
  else
    record memcheck SKIP 0 "compute-sanitizer not found"
    record racecheck SKIP 0 "compute-sanitizer not found"
  fi

  run_step bench_ops 55 "$PY" benchmarks/bench_ops.py --device cuda --rep-ms 30 \
    --out "$OUT/bench_ops"

  if "$PY" -c "import open_clip" >/dev/null 2>&1; then
    run_step bench_train 30 "$PY" benchmarks/bench_train.py --device cuda --configs tiny \
      --out "$OUT/bench_train"
  else
    record bench_train SKIP 0 "open_clip is not importable (carry its wheel to run it)"
  fi
fi

# ---- summary --------------------------------------------------------------------------------
FAILED=0
{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), $((SECONDS - START))s"
  echo
  echo "| step | status | seconds | note |"
  echo "| --- | --- | --- | --- |"
  for i in "${!NAMES[@]}"; do
    echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${TIMES[$i]} | ${NOTES[$i]//|/\\|} |"
    case "${STATUS[$i]}" in FAIL | TIMEOUT) FAILED=1 ;; esac
  done
} >"$OUT/summary.md"
cat "$OUT/summary.md"
exit "$FAILED"
