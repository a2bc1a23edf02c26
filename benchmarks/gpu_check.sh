#!/usr/bin/env bash
# GPU check of art_fast on a bare GPU machine (DESIGN §7), in under 9 minutes
# on one H200, with no network: nothing is downloaded, the package is installed from this
# checkout into the interpreter named by PYTHON. Steps, in order, with their time box (s):
#
#   env                  10  versions: GPU, driver, CPU cores, Python, pip, torch, triton, nvcc,
#                            compute-sanitizer, ninja
#   deps                 10  every Python module the GPU steps need is importable (torch, triton,
#                            numpy, pytest, yaml, tqdm, PIL, setuptools); one line names
#                            the missing ones, and then no later step runs. Optional:
#                            open_clip (bench_train), decord/av (video tests), pytest-timeout,
#                            xdist, ninja (a serial, slower build without it)
#   cuda_build           10  nvcc's CUDA major against torch.version.cuda's: equal -> the build
#                            gets ART_FAST_CUDA=1 (a CUDA build failure is then loud); different
#                            or no nvcc -> ART_FAST_CUDA=0 (Triton steps still run), recorded
#                            FAIL (SKIP with GPU_CHECK_ALLOW_NO_CUDA=1). TORCH_CUDA_ARCH_LIST from
#                            torch.cuda.get_device_capability() (9.0 on an H200), MAX_JOBS=nproc
#   install              90  $PYTHON -m pip install -v --no-index --use-pep517
#                            --no-build-isolation --no-deps -e . (builds art_fast._C; PEP 660
#                            makes art_fast.kernels = kernels/ importable), then
#                            checks that art_fast comes from this checkout with its extension.
#                            A failed CUDA build FAILs the step and is retried with
#                            ART_FAST_CUDA=0, so that the Triton steps still run
#   selftest             35  $PYTHON -m art_fast.cli info --selftest (every op x backend x
#                            dtype against the float64 reference; compiles the Triton kernels)
#   tests_cuda           40  pytest -m gpu -k "not triton": tests/test_cuda_ops.py and the
#                            cuda-cuda cases of tests/test_<op>.py for every op
#   tests_triton_xattn   45  pytest -m gpu -k triton: the cuda-triton cases of
#                            tests/test_cross_attention.py
#   tests_triton_nce     50  the same for info_nce
#   tests_triton_topk    25  the same for topk_regions
#   tests_misc           20  tests/test_{backends,cuda_build}.py with the GPU visible
#                            (ART_FAST_REQUIRE_CUDA_BUILD=1 when the CUDA kernels were built)
#   tests_gpu_other      10  pytest -m gpu over the other test files (autograd contracts,
#                            registration, opcheck)
#   memcheck             35  compute-sanitizer --tool memcheck over benchmarks/sanitize_ops.py
#                            (every op, forward + backward, on the cuda and triton backends)
#   racecheck            30  compute-sanitizer --tool racecheck over the same driver
#   bench_ops_xattn      40  benchmarks/bench_ops.py --device cuda --ops cross_attention
#   bench_ops_nce        35  ... --ops info_nce
#   bench_ops_topk       15  ... --ops topk_regions
#   bench_train_tiny     15  benchmarks/bench_train.py --device cuda --configs tiny (open_clip)
#   bench_train_vitb16   25  ... --configs vitb16 (open_clip)
#                       ---
#                       540  = the default budget (GPU_CHECK_BUDGET)
#
# The ops are the modules of art_fast/ops (as art_fast.ops.SPECS finds them), in the order of
# their names: each has its tests_triton_<op> and bench_ops_<op> steps (the short names and
# boxes above; an op added later gets its own name and boxes of 30 s and 20 s, which the
# default budget, the sum of the default boxes, grows by).
#
# Time: every step runs under `timeout`; its limit is what is left of the budget minus the
# boxes of the steps after it, so a step gets its box plus whatever earlier steps left unused,
# and the later steps keep theirs. A step whose turn comes with under 5 s left is not run and
# is listed as such (TIMEOUT, "not run: budget spent"). A failed step does not stop the others.
#
# Usage: benchmarks/gpu_check.sh [--dry-run] OUTDIR
#   --dry-run   (or GPU_CHECK_DRY_RUN=1) proves the script on a CPU machine: env, deps,
#               cuda_build and install run for real (GPU_CHECK_SKIP_BUILD=1 reuses the built
#               extension); each GPU step prints and records the exact command it would run
#               (DRYRUN), after a CPU probe of it: the test groups are collected (so a
#               selection that names no test shows), the sanitizer driver runs on CPU
#               (--device cpu --quick), the bench_ops arguments are parsed. In a dry run the
#               time boxes are not enforced (each executed step gets up to 30 min).
#
# Output (OUTDIR stays flat: at most 2 files, plus steps/ with GPU_CHECK_KEEP_STEPS=1):
#   OUTDIR/summary.md       one row per step: PASS, FAIL, TIMEOUT, SKIP or DRYRUN, seconds,
#                           box, note; the steps not run for lack of budget; rewritten after
#                           every step, so a run killed from outside still leaves one
#   OUTDIR/results.tar.gz   gpu_check/: <step>.log for every step, <step>.xml (junit) for the
#                           test steps, bench_*/ (bench_ops.json/.md, bench_train.json/.md),
#                           console.log, summary.md; also rewritten after every step
# Exit status: 0 when no step failed or timed out, 1 otherwise, 2 for bad usage.
#
# Environment:
#   PYTHON                  the interpreter (default python3), with torch (CUDA) and triton
#   GPU_CHECK_DRY_RUN=1     as --dry-run
#   GPU_CHECK_BUDGET        seconds for the whole run (default: the sum of the default boxes,
#                           540)
#   GPU_CHECK_BOX_<step>    the box of one step, e.g. GPU_CHECK_BOX_install=200
#   GPU_CHECK_SKIP_BUILD=1  do not rebuild: check that art_fast is installed from this checkout
#   GPU_CHECK_ARCH          TORCH_CUDA_ARCH_LIST (default: the visible GPU's; 9.0 without one)
#   GPU_CHECK_ALLOW_NO_CUDA=1  an nvcc/torch CUDA mismatch is SKIP, not FAIL
#   GPU_CHECK_XDIST         pytest-xdist workers per test step (default 4 with >= 8 cores and
#                           xdist installed; 0 = serial)
#   GPU_CHECK_TEST_TIMEOUT  per-test timeout in s when pytest-timeout is installed (default 90)
#   GPU_CHECK_TRITON_CONFIGS  ART_FAST_TRITON_CONFIGS of the test groups: "first" (default: the
#                           first autotune config only, no autotuning sweep per shape) or "all"
#   GPU_CHECK_REP_MS        bench_ops --rep-ms (default 20)
#   GPU_CHECK_EXTRA_REQUIRED  more module names the deps step requires (space-separated)
#   GPU_CHECK_DRY_PROBES=0  dry run: skip the CPU probes (faster)
#   GPU_CHECK_KEEP_STEPS=1  also copy the step files to OUTDIR/steps/
set -u -o pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit "${1:-2}"
}

bad_usage() {
  echo "gpu_check.sh: $*" >&2
  echo "usage: benchmarks/gpu_check.sh [--dry-run] OUTDIR   (--help for more)" >&2
  exit 2
}

DRY=${GPU_CHECK_DRY_RUN:-0}
case "$DRY" in 0 | 1) ;; *) bad_usage "GPU_CHECK_DRY_RUN must be 0 or 1, got '$DRY'" ;; esac
POS=()
for arg in "$@"; do
  case "$arg" in
    -h | --help) usage 0 ;;
    --dry-run) DRY=1 ;;
    -*) bad_usage "unknown option $arg" ;;
    *) POS+=("$arg") ;;
  esac
done
[ "${#POS[@]}" -eq 1 ] || bad_usage "expected one OUTDIR, got ${#POS[@]} arguments"
BUDGET=${GPU_CHECK_BUDGET:-}
case "$BUDGET" in *[!0-9]*) bad_usage "GPU_CHECK_BUDGET must be a number of seconds" ;; esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ---- the ops, the steps and their boxes -----------------------------------------------------
# The ops: the modules of art_fast/ops not starting with "_", in the order of their names (the
# rule of art_fast.ops.SPECS, read from the checkout: the steps are known before the deps and
# install steps, and nothing is imported for them).
OPS=()
while IFS= read -r op; do OPS+=("$op"); done < <(
  for f in "$ROOT"/art_fast/ops/[!_]*.py; do [ -e "$f" ] && basename "$f" .py; done | LC_ALL=C sort)
[ "${#OPS[@]}" -gt 0 ] || bad_usage "no op module found in $ROOT/art_fast/ops"
declare -A SHORT=([cross_attention]=xattn [info_nce]=nce [topk_regions]=topk)
declare -A TRITON_BOX=([cross_attention]=45 [info_nce]=50 [topk_regions]=25)
declare -A BENCH_BOX=([cross_attention]=40 [info_nce]=35 [topk_regions]=15)
declare -A BOX=([env]=10 [deps]=10 [cuda_build]=10 [install]=90 [selftest]=35
  [tests_cuda]=40 [tests_misc]=20 [tests_gpu_other]=10 [memcheck]=35 [racecheck]=30
  [bench_train_tiny]=15 [bench_train_vitb16]=25)
TRITON_STEPS=()
BENCH_STEPS=()
for op in "${OPS[@]}"; do
  short=${SHORT[$op]:-$op}
  TRITON_STEPS+=("tests_triton_$short")
  BOX[tests_triton_$short]=${TRITON_BOX[$op]:-30}
  BENCH_STEPS+=("bench_ops_$short")
  BOX[bench_ops_$short]=${BENCH_BOX[$op]:-20}
done
STEPS=(env deps cuda_build install selftest
  tests_cuda "${TRITON_STEPS[@]}" tests_misc tests_gpu_other
  memcheck racecheck "${BENCH_STEPS[@]}"
  bench_train_tiny bench_train_vitb16)
BOX_SUM=0
DEFAULT_SUM=0  # the boxes before GPU_CHECK_BOX_<step>: the default budget
for s in "${STEPS[@]}"; do
  DEFAULT_SUM=$((DEFAULT_SUM + BOX[$s]))
  var=GPU_CHECK_BOX_$s
  if [ -n "${!var:-}" ]; then
    case "${!var}" in *[!0-9]*) bad_usage "$var must be a number of seconds" ;; esac
    BOX[$s]=${!var}
  fi
  BOX_SUM=$((BOX_SUM + BOX[$s]))
done
BUDGET=${BUDGET:-$DEFAULT_SUM}

OUT=${POS[0]}
mkdir -p "$OUT" 2>/dev/null || bad_usage "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
case "$PY" in  # an absolute path, without resolving symlinks (a venv's python is one)
  */*) if [ -e "$PY" ]; then PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"; fi ;;
  *) if command -v "$PY" >/dev/null 2>&1; then PY=$(command -v "$PY"); fi ;;
esac
cd "$ROOT" || exit 2
NPROC=$(nproc 2>/dev/null || echo 4)
START=$SECONDS
STAMP=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# The step files are written outside OUTDIR (which then holds 2 files only) and archived into
# OUTDIR/results.tar.gz after every step.
WORK_PARENT=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
WORK=$WORK_PARENT/gpu_check
mkdir -p "$WORK"
rm -rf "$OUT/summary.md" "$OUT/results.tar.gz" "$OUT/steps"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TRITON_PRINT_AUTOTUNING=0 PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
unset ART_FAST_BACKEND
if [ "$DRY" = 0 ]; then unset TRITON_INTERPRET; fi

NAMES=()
STATUS=()
TIMES=()
NOTES=()
NOT_RUN=()

say() {
  echo "$*"
  echo "$*" >>"$WORK/console.log"
}

# boxes of the steps after $1
reserved_after() {
  local s seen=0 sum=0
  for s in "${STEPS[@]}"; do
    if [ "$seen" = 1 ]; then sum=$((sum + BOX[$s])); fi
    if [ "$s" = "$1" ]; then seen=1; fi
  done
  echo "$sum"
}

# the time limit of step $1 (see the header); in a dry run the boxes are not enforced
step_limit() {
  if [ "$DRY" = 1 ]; then
    echo 1800
    return
  fi
  echo $((BUDGET - (SECONDS - START) - $(reserved_after "$1")))
}

write_summary() {  # $1: "final" or "partial"
  local i overall=PASS tmp=$OUT/.summary.md.tmp
  for i in "${!STATUS[@]}"; do
    case "${STATUS[$i]}" in FAIL | TIMEOUT) overall=FAIL ;; esac
  done
  {
    if [ "$1" = final ]; then
      echo "# gpu_check: $overall$([ "$DRY" = 1 ] && echo ' (dry run)')"
    else
      echo "# gpu_check: in progress ($overall so far; ${#NAMES[@]} of ${#STEPS[@]} steps done)"
    fi
    echo
    echo "Started $STAMP on $(hostname 2>/dev/null || echo '?'); $((SECONDS - START)) s used of" \
      "the ${BUDGET} s budget (step boxes sum to ${BOX_SUM} s)$([ "$DRY" = 1 ] &&
        echo '; dry run: GPU steps not run, their commands recorded')."
    echo "Command: \`benchmarks/gpu_check.sh$([ "$DRY" = 1 ] && echo ' --dry-run') $OUT\`;" \
      "PYTHON=\`$PY\`; repository \`$ROOT\`."
    echo
    echo "| step | status | seconds | box | note |"
    echo "| --- | --- | --- | --- | --- |"
    for i in "${!NAMES[@]}"; do
      echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${TIMES[$i]} | ${BOX[${NAMES[$i]}]} |" \
        "${NOTES[$i]//|/\\|} |"
    done
    echo
    if [ "${#NOT_RUN[@]}" -gt 0 ]; then
      echo "Not run because the budget was spent: ${NOT_RUN[*]}."
    else
      echo "Not run because the budget was spent: none."
    fi
    echo
    echo "Statuses: PASS; FAIL (see the step's log); TIMEOUT (killed at its limit, or not run" \
      "for lack of budget); SKIP (not applicable here, the note says why); DRYRUN (the command" \
      "is in the note and in the step's log). Logs, junit XML and benchmark outputs:" \
      "results.tar.gz (\`tar xzf results.tar.gz\` gives gpu_check/<step>.log, <step>.xml," \
      "bench_*/)."
  } >"$tmp" && mv -f "$tmp" "$OUT/summary.md"
  cp -f "$OUT/summary.md" "$WORK/summary.md"
  tar -C "$WORK_PARENT" -czf "$OUT/.results.tar.gz.tmp" gpu_check 2>/dev/null &&
    mv -f "$OUT/.results.tar.gz.tmp" "$OUT/results.tar.gz"
}

record() {  # name status seconds note
  NAMES+=("$1")
  STATUS+=("$2")
  TIMES+=("$3")
  NOTES+=("$4")
  say "$(printf '[gpu_check] %-18s %-7s %4ss  %s' "$1" "$2" "$3" "$4")"
  write_summary partial
}

last_line() {  # the last non-empty line of a log, trimmed, without pytest's ===== frame
  grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 | sed -e 's/^=* *//' -e 's/ *=*$//' |
    cut -c1-"${2:-120}"
}

quote_cmd() {
  local out="" a
  for a in "$@"; do out+="$(printf '%q' "$a") "; done
  echo "${out% }"
}

# run_step NAME CMD...: CMD with its output in WORK/NAME.log, under the step's limit. Exit
# status OK_RC (default 0, reset after each step) also counts as a PASS.
OK_RC=0
run_step() {
  local name=$1
  shift
  local limit
  limit=$(step_limit "$name")
  if [ "$limit" -lt 5 ]; then
    NOT_RUN+=("$name")
    record "$name" TIMEOUT 0 "not run: the ${BUDGET} s budget is spent (${limit} s left for it after the boxes of the later steps)"
    return 1
  fi
  local t0=$SECONDS rc log=$WORK/$name.log
  echo "\$ $(quote_cmd "$@")" >"$log"
  echo "# limit ${limit} s (box ${BOX[$name]} s)" >>"$log"
  timeout --kill-after=5 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  local dt=$((SECONDS - t0))
  if [ "$rc" -eq 0 ] || [ "$rc" -eq "$OK_RC" ]; then
    record "$name" PASS "$dt" "$(last_line "$log")"
    rc=0
  elif [ "$rc" -eq 124 ] || { [ "$rc" -eq 137 ] && [ "$dt" -ge $((limit - 1)) ]; }; then
    record "$name" TIMEOUT "$dt" "killed at its ${limit} s limit (see $name.log): $(last_line "$log" 80)"
  elif [ "$rc" -eq 137 ]; then
    record "$name" FAIL "$dt" "killed by SIGKILL before its limit (out of memory?) (see $name.log): $(last_line "$log" 80)"
  else
    record "$name" FAIL "$dt" "exit $rc (see $name.log): $(last_line "$log" 300)"
  fi
  OK_RC=0
  return "$rc"
}

# dry_step NAME PROBE_NOTE CMD...: a GPU step of a dry run: the command is logged and
# recorded (DRYRUN), after the probe (PROBE_CMD, an array set by the caller; empty: none).
# A failed probe is a FAIL.
PROBE_CMD=()
dry_step() {
  local name=$1 what=$2
  shift 2
  local t0=$SECONDS log=$WORK/$name.log cmd rc=0 note
  cmd=$(quote_cmd "$@")
  {
    echo "# dry run: would run (limit ${BOX[$name]} s + unused time of earlier steps):"
    echo "\$ $cmd"
  } >"$log"
  say "[gpu_check] DRYRUN $name: \$ $cmd"
  note=""
  if [ "${#PROBE_CMD[@]}" -gt 0 ] && [ "${GPU_CHECK_DRY_PROBES:-1}" = 1 ]; then
    echo "# CPU probe ($what): \$ $(quote_cmd "${PROBE_CMD[@]}")" >>"$log"
    timeout --kill-after=5 300 "${PROBE_CMD[@]}" >>"$log" 2>&1
    rc=$?
    note="$what: $(last_line "$log" 100); "
  fi
  PROBE_CMD=()
  if [ "$rc" -ne 0 ] && [ "$rc" -ne "$OK_RC" ]; then
    OK_RC=0
    record "$name" FAIL $((SECONDS - t0)) "dry-run probe failed, exit $rc (see $name.log): ${note}would run: $cmd"
    return 1
  fi
  OK_RC=0
  record "$name" DRYRUN $((SECONDS - t0)) "${note}would run: $cmd"
}

not_run_all() {  # status note: record every step not recorded yet
  local s n done_
  for s in "${STEPS[@]}"; do
    done_=0
    for n in "${NAMES[@]}"; do [ "$n" = "$s" ] && done_=1; done
    [ "$done_" = 1 ] || record "$s" "$1" 0 "$2"
  done
}

finish() {
  local i failed=0
  for i in "${!STATUS[@]}"; do
    case "${STATUS[$i]}" in FAIL | TIMEOUT) failed=1 ;; esac
  done
  write_summary final
  if [ "${GPU_CHECK_KEEP_STEPS:-0}" = 1 ]; then
    rm -rf "$OUT/steps" && cp -r "$WORK" "$OUT/steps"
  fi
  rm -rf "$WORK_PARENT"
  echo
  cat "$OUT/summary.md"
  exit "$failed"
}

# shellcheck disable=SC2317,SC2329  # run by the trap below
on_signal() {
  say "[gpu_check] interrupted"
  not_run_all FAIL "not run: gpu_check.sh was interrupted"
  finish
}
trap on_signal INT TERM HUP

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

# nvcc the way setup.py finds the toolkit: $CUDA_HOME / $CUDA_PATH, nvcc on PATH, /usr/local/cuda*
find_nvcc() {
  local c
  for c in "${CUDA_HOME:-/nonexistent}/bin/nvcc" "${CUDA_PATH:-/nonexistent}/bin/nvcc"; do
    if [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return 0; fi
  local -a versioned=(/usr/local/cuda-*/bin/nvcc)
  local j
  if [ -x /usr/local/cuda/bin/nvcc ]; then echo /usr/local/cuda/bin/nvcc; return 0; fi
  for ((j = ${#versioned[@]} - 1; j >= 0; j--)); do  # the newest first, as setup.py
    if [ -x "${versioned[$j]}" ]; then echo "${versioned[$j]}"; return 0; fi
  done
  return 1
}

say "[gpu_check] $([ "$DRY" = 1 ] && echo 'dry run' || echo 'GPU run') of $ROOT with $PY;" \
  "budget ${BUDGET} s (boxes ${BOX_SUM} s); results -> $OUT"

# ---- env --------------------------------------------------------------------------------------
# shellcheck disable=SC2317,SC2329  # run through `bash -c` (timeout cannot run a shell function)
env_info() {
  date -u
  uname -a
  echo "cores: $(nproc)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 ||
    echo "nvidia-smi: absent"
  echo "python: $PY"
  "$PY" -m pip --version 2>&1 || echo "pip: absent for $PY"
  echo "nvcc: $(find_nvcc || echo absent)"
  if N=$(find_nvcc); then "$N" --version | tail -n 2; fi
  echo "compute-sanitizer: $(find_sanitizer || echo absent)"
  echo "ninja: $(command -v ninja || echo 'absent on PATH')"
  echo "gcc: $(gcc --version 2>/dev/null | head -n 1 || echo absent)"
  "$PY" - <<'PYEOF'
import importlib.metadata as md
import platform

import torch

print("torch", torch.__version__, "cuda", torch.version.cuda)
gpu = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if gpu else "no CUDA device"
cap = ".".join(map(str, torch.cuda.get_device_capability(0))) if gpu else "-"
print("cuda available", gpu, name, "capability", cap)
vers = {}
for pkg in ("triton", "numpy", "pytest", "pytest-timeout", "pytest-xdist", "ninja",
            "setuptools", "open_clip_torch", "decord", "decord2", "av"):
    try:
        vers[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
        vers[pkg] = "absent"
    print(pkg, vers[pkg])
import os

with open(os.path.join(os.environ["WORK"], "gpu.env"), "w") as f:
    f.write(f"{torch.version.cuda or 'none'} {int(gpu)} {cap}\n")
print(f"{name} (sm {cap}), python {platform.python_version()}, torch {torch.__version__} "
      f"(CUDA {torch.version.cuda}), triton {vers['triton']}")
PYEOF
}
export PY WORK
export -f env_info find_sanitizer find_nvcc
run_step env bash -c env_info

# ---- deps -------------------------------------------------------------------------------------
# shellcheck disable=SC2317,SC2329  # run through `bash -c`
check_deps() {
  # shellcheck disable=SC2086  # a space-separated list of module names
  "$PY" - "$WORK/deps.env" ${GPU_CHECK_EXTRA_REQUIRED:-} <<'PYEOF'
import importlib
import importlib.util
import shutil
import sys

env_file, extra = sys.argv[1], sys.argv[2:]
# module -> what needs it; all of them are imported for real (a broken install shows here)
required = {"torch": "everything", "triton": "the triton backend and its tests",
            "numpy": "tests, benchmarks", "pytest": "the test steps",
            "yaml": "pyyaml: art_fast.train config",
            "tqdm": "art_fast.train", "PIL": "pillow: art_fast.data / viz",
            "setuptools": "the build (torch.utils.cpp_extension)"}
required.update({m: "GPU_CHECK_EXTRA_REQUIRED" for m in extra})
optional = {"open_clip": "bench_train steps (SKIP without it)",
            "decord": "video decoding tests (skip without it)",
            "av": "video decoding tests (skip without it)",
            "pytest_timeout": "the per-test timeout", "xdist": "parallel test steps",
            "ninja": "a parallel build (serial and slower without it)"}
missing = []
for mod, why in required.items():
    try:
        m = importlib.import_module(mod)
        print(f"ok       {mod} {getattr(m, '__version__', '')}  ({why})")
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install
        missing.append(mod)
        print(f"MISSING  {mod}: {type(exc).__name__}: {exc}  ({why})")
# The editable install maps art_fast.kernels to kernels/ (package_dir): that needs a PEP 660
# editable install (pip --use-pep517), i.e. setuptools >= 64, plus wheel below 70.1.
if "setuptools" not in missing:
    import re
    from importlib.metadata import version

    st = tuple(int(x) for x in re.findall(r"\d+", version("setuptools"))[:2])
    if st < (64, 0):
        missing.append("setuptools>=64")
        print(f"MISSING  setuptools>=64: {version('setuptools')} cannot install art_fast.kernels "
              "editable (PEP 660)")
    elif st < (70, 1) and importlib.util.find_spec("wheel") is None:
        missing.append("wheel")
        print(f"MISSING  wheel: setuptools {version('setuptools')} < 70.1 needs it for pip -e")
have = {}
ninja_dir = ""
for mod, why in optional.items():
    if mod == "ninja":  # torch runs the `ninja` command: on PATH, or the pip package's bin
        found = shutil.which("ninja") is not None
        if not found and importlib.util.find_spec("ninja") is not None:
            try:
                import ninja

                ninja_dir = getattr(ninja, "BIN_DIR", "")
                found = bool(ninja_dir)
            except Exception:  # noqa: BLE001
                pass
    else:
        found = importlib.util.find_spec(mod) is not None
    have[mod] = found
    print(f"{'ok' if found else 'absent':8} {mod} (optional: {why})")
with open(env_file, "w") as f:
    for mod, found in have.items():
        f.write(f"HAVE_{mod.upper()}={int(found)}\n")
    f.write(f"NINJA_DIR='{ninja_dir}'\n")
absent = [m for m, f in have.items() if not f]
if missing:
    print(f"gpu_check: missing required Python module(s) for {sys.executable}: "
          f"{', '.join(missing)} (pip cannot download here: install them into that interpreter "
          "from local wheels, or set PYTHON to one that has them)")
    sys.exit(1)
print("all required modules present" + (f"; optional absent: {', '.join(absent)}" if absent
                                         else ""))
PYEOF
}
export GPU_CHECK_EXTRA_REQUIRED
export -f check_deps
DEPS_OK=1
run_step deps bash -c check_deps || DEPS_OK=0
HAVE_OPEN_CLIP=0 HAVE_PYTEST_TIMEOUT=0 HAVE_XDIST=0 HAVE_NINJA=0 NINJA_DIR=""
if [ -f "$WORK/deps.env" ]; then
  # shellcheck disable=SC1091
  . "$WORK/deps.env"
fi
if [ "$DEPS_OK" != 1 ]; then
  MISSING_LINE=$(grep -m 1 '^gpu_check: missing' "$WORK/deps.log" ||
    echo "gpu_check: $PY cannot run the dependency check (see deps.log)")
  echo "$MISSING_LINE" >&2
  echo "$MISSING_LINE" >>"$WORK/console.log"
  MODS=$(sed -n 's/^gpu_check: missing required Python module(s) for [^:]*: \([^(]*\) (.*/\1/p' \
    <<<"$MISSING_LINE")
  not_run_all FAIL "not run: missing required module(s)${MODS:+: $MODS} (see deps)"
  finish
fi

# Boxes of the steps known to SKIP are released to the others (the summary shows box 0).
if [ "${HAVE_OPEN_CLIP:-0}" != 1 ]; then BOX[bench_train_tiny]=0 BOX[bench_train_vitb16]=0; fi
if [ "$DRY" = 0 ] && ! find_sanitizer >/dev/null; then BOX[memcheck]=0 BOX[racecheck]=0; fi

# ---- cuda_build: the decision ------------------------------------------------------------
t0=$SECONDS
if [ -s "$WORK/gpu.env" ]; then
  GPU_INFO=$(cat "$WORK/gpu.env")  # written by the env step
else
  GPU_INFO=$("$PY" -c "
import torch
gpu = torch.cuda.is_available()
cap = '.'.join(map(str, torch.cuda.get_device_capability(0))) if gpu else ''
print(torch.version.cuda or 'none', int(gpu), cap or '-')
" 2>"$WORK/cuda_build.log")
fi
read -r TORCH_CUDA HAVE_GPU CAP <<<"${GPU_INFO:-none 0 -}"
if [ -n "${GPU_CHECK_ARCH:-}" ]; then
  ARCH=$GPU_CHECK_ARCH ARCH_WHY="GPU_CHECK_ARCH"
elif [ "$CAP" != "-" ]; then
  ARCH=$CAP ARCH_WHY="the visible GPU"
else
  ARCH=9.0 ARCH_WHY="no GPU visible: the H200's"
fi
CUDA_FLAG=0
NVCC=$(find_nvcc || true)
NVCC_VER=""
if [ -n "$NVCC" ]; then
  NVCC_VER=$("$NVCC" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)
fi
{
  echo "torch CUDA: $TORCH_CUDA; GPU visible: $HAVE_GPU (capability $CAP)"
  echo "nvcc: ${NVCC:-absent} (${NVCC_VER:-no version})"
} >>"$WORK/cuda_build.log"
if [ "$TORCH_CUDA" = none ]; then
  CB_STATUS=FAIL CB_NOTE="torch is a CPU-only build: no CUDA kernels (ART_FAST_CUDA=0)"
elif [ -z "$NVCC" ] || [ -z "$NVCC_VER" ]; then
  CB_STATUS=FAIL CB_NOTE="no working nvcc (CUDA_HOME, PATH, /usr/local/cuda*): building without the CUDA kernels (ART_FAST_CUDA=0); the Triton steps still run"
elif [ "${NVCC_VER%%.*}" != "${TORCH_CUDA%%.*}" ]; then
  CB_STATUS=FAIL CB_NOTE="nvcc $NVCC_VER ($NVCC) does not match torch's CUDA $TORCH_CUDA: building without the CUDA kernels (ART_FAST_CUDA=0); the Triton steps still run"
else
  CUDA_FLAG=1 CB_STATUS=PASS
  CB_NOTE="nvcc $NVCC_VER matches torch's CUDA $TORCH_CUDA: ART_FAST_CUDA=1, TORCH_CUDA_ARCH_LIST=$ARCH ($ARCH_WHY), MAX_JOBS=$NPROC"
fi
if [ "$CB_STATUS" = FAIL ] && [ "${GPU_CHECK_ALLOW_NO_CUDA:-0}" = 1 ]; then CB_STATUS=SKIP; fi
if [ "${HAVE_NINJA:-0}" != 1 ]; then CB_NOTE="$CB_NOTE; ninja absent: a serial, slower build"; fi
echo "$CB_NOTE" >>"$WORK/cuda_build.log"
record cuda_build "$CB_STATUS" $((SECONDS - t0)) "$CB_NOTE"

# ---- install ------------------------------------------------------------------------------------
# Prints "INSTALLED cuda_kernels=0|1" when art_fast (and art_fast.kernels) come from this
# checkout with a usable extension.
# shellcheck disable=SC2317,SC2329  # run through `bash -c`
verify_install() {
  "$PY" - "$ROOT" <<'PYEOF'
import importlib.util
import os
import sys

root = os.path.realpath(sys.argv[1])
import art_fast
from art_fast import _ext

where = os.path.realpath(os.path.dirname(art_fast.__file__))
spec = importlib.util.find_spec("art_fast.kernels")
errors = []
if where != os.path.join(root, "art_fast"):
    errors.append(f"art_fast is imported from {where}, not from {root}")
if spec is None:
    errors.append("art_fast.kernels is not importable (the package is not installed: "
                  "pip install --no-build-isolation --no-deps -e .)")
elif not os.path.realpath(spec.origin).startswith(os.path.join(root, "kernels")):
    errors.append(f"art_fast.kernels comes from {spec.origin}, not from {root}/kernels")
if not _ext.EXT_LOADED:
    errors.append(f"art_fast._C is not usable: {_ext.EXT_ERROR}")
    cuda = 0
else:
    import art_fast._C as C
    cuda = int(bool(C.compiled_with_cuda))
    print(f"art_fast._C: {C.__file__}, compiled with CUDA kernels: {bool(cuda)}")
if errors:
    for e in errors:
        print("ERROR:", e)
    sys.exit(1)
print(f"INSTALLED cuda_kernels={cuda}")
print(f"art_fast and art_fast.kernels import from {root}; art_fast._C loads, "
      f"{'with' if cuda else 'without'} the CUDA kernels")
PYEOF
}

# shellcheck disable=SC2317,SC2329  # run through `bash -c`
install_pkg() {
  set -o pipefail  # not inherited by `bash -c`
  local -a pip
  if "$PY" -m pip --version >/dev/null 2>&1; then
    pip=("$PY" -m pip install -v --no-index --use-pep517)
  elif "$PY" -m ensurepip --default-pip >/dev/null 2>&1 && "$PY" -m pip --version >/dev/null 2>&1; then
    echo "pip was absent: installed it with ensurepip (offline)"
    pip=("$PY" -m pip install -v --no-index --use-pep517)
  elif command -v uv >/dev/null 2>&1; then
    echo "pip is absent for $PY (and ensurepip failed): using uv"
    pip=(uv pip install --python "$PY" --offline)
  else
    echo "gpu_check: neither pip (nor ensurepip) nor uv can install into $PY"
    return 1
  fi
  echo "\$ ART_FAST_CUDA=$CUDA_FLAG TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$NPROC ${pip[*]} --no-build-isolation --no-deps -e $ROOT"
  # the interpreter's bin folder (and the pip ninja's) on PATH, as an activated venv has it
  local path
  path="${NINJA_DIR:+$NINJA_DIR:}$(dirname "$PY"):$PATH"
  local first
  if env PATH="$path" ART_FAST_CUDA="$CUDA_FLAG" TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$NPROC" \
    "${pip[@]}" --no-build-isolation --no-deps -e "$ROOT" 2>&1 | tee "$WORK/pip.out"; then
    verify_install
    return
  fi
  # the first compiler / linker / setup.py error, for the summary
  first=$(grep -m 1 -E '(^|[^a-z])(error|Error|ERROR)[: ]' "$WORK/pip.out" | sed 's/^ *//' |
    cut -c1-160)
  if [ "$CUDA_FLAG" != 1 ]; then
    echo "gpu_check: the build failed: ${first:-see above}"
    return 1
  fi
  # The CUDA build failed (loudly: this step FAILs). Install without the CUDA kernels so that
  # the Triton steps can still run.
  echo "gpu_check: the build with ART_FAST_CUDA=1 failed; retrying with ART_FAST_CUDA=0"
  env PATH="$path" ART_FAST_CUDA=0 MAX_JOBS="$NPROC" \
    "${pip[@]}" --no-build-isolation --no-deps -e "$ROOT" && verify_install
  echo "gpu_check: the CUDA build failed (${first:-see above}); installed without the CUDA" \
    "kernels, so that the Triton steps run"
  return 1
}
export ROOT CUDA_FLAG ARCH NPROC NINJA_DIR
export -f verify_install install_pkg
if [ "${GPU_CHECK_SKIP_BUILD:-0}" = 1 ]; then
  t0=$SECONDS
  if timeout 120 bash -c verify_install >"$WORK/install.log" 2>&1; then
    record install SKIP $((SECONDS - t0)) "GPU_CHECK_SKIP_BUILD=1: not rebuilt; art_fast is installed from this checkout ($(grep -o 'cuda_kernels=[01]' "$WORK/install.log"))"
  else
    record install FAIL $((SECONDS - t0)) "GPU_CHECK_SKIP_BUILD=1, but: $(grep -m 1 ERROR "$WORK/install.log" | cut -c1-150 || last_line "$WORK/install.log")"
  fi
else
  run_step install bash -c install_pkg
fi
INSTALLED=0 CUDA_BUILT=0
if grep -q '^INSTALLED' "$WORK/install.log" 2>/dev/null; then INSTALLED=1; fi
if grep -q '^INSTALLED cuda_kernels=1' "$WORK/install.log" 2>/dev/null; then CUDA_BUILT=1; fi
if [ "$CUDA_BUILT" = 0 ]; then BOX[tests_cuda]=0; fi
if [ "$INSTALLED" = 1 ] && [ "$CUDA_FLAG" = 1 ] && [ "$CUDA_BUILT" = 0 ]; then
  say "[gpu_check] note: the installed extension has no CUDA kernels although nvcc matches torch"
fi

# ---- the GPU steps ------------------------------------------------------------------------
PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfEs)
RUN_OPTS=(--durations=5)
if [ "${HAVE_PYTEST_TIMEOUT:-0}" = 1 ]; then RUN_OPTS+=("--timeout=${GPU_CHECK_TEST_TIMEOUT:-90}"); fi
XDIST=${GPU_CHECK_XDIST:-}
if [ -z "$XDIST" ]; then
  if [ "$NPROC" -ge 8 ]; then XDIST=4; else XDIST=0; fi
fi
if [ "${HAVE_XDIST:-0}" = 1 ] && [ "$XDIST" -gt 0 ]; then RUN_OPTS+=(-n "$XDIST"); fi
OP_TESTS=()  # one test file per op, parametrised over every backend (cuda-cuda, cuda-triton)
for op in "${OPS[@]}"; do OP_TESTS+=("tests/test_$op.py"); done

# The test steps: name, selection (files and -m/-k); "-" marks the end of a selection.
TEST_STEPS=(tests_cuda -m gpu tests/test_cuda_ops.py "${OP_TESTS[@]}" -k "not triton" -)
for op in "${OPS[@]}"; do
  TEST_STEPS+=("tests_triton_${SHORT[$op]:-$op}" -m gpu "tests/test_$op.py" -k triton -)
done
TEST_STEPS+=(
  tests_misc tests/test_backends.py tests/test_cuda_build.py -
  tests_gpu_other -m gpu tests --ignore=tests/test_cuda_ops.py "${OP_TESTS[@]/#/--ignore=}" -
)

GPU_BLOCK=""
if [ "$DRY" = 0 ] && [ "$HAVE_GPU" != 1 ]; then
  GPU_BLOCK="no CUDA device is visible to torch (on a machine without a GPU, use --dry-run)"
elif [ "$INSTALLED" != 1 ]; then
  GPU_BLOCK="art_fast is not installed from this checkout (see install)"
fi

gpu_step() {  # name cmd...: run it, or record it (dry run), or record why it cannot run
  local name=$1
  shift
  if [ -n "$GPU_BLOCK" ]; then
    PROBE_CMD=()
    OK_RC=0
    record "$name" FAIL 0 "not run: $GPU_BLOCK"
  elif [ "$DRY" = 1 ]; then
    dry_step "$name" "$PROBE_WHAT" "$@"
  else
    PROBE_CMD=()
    run_step "$name" "$@"
  fi
  PROBE_WHAT=""
}
PROBE_WHAT=""

# selftest
PROBE_CMD=(bash -c "$(quote_cmd "$PY" -m art_fast.cli info --help) | grep -q -- --selftest && echo 'flag present' || echo 'flag absent (the step would FAIL)'")
PROBE_WHAT="--selftest"
gpu_step selftest "$PY" -m art_fast.cli info --selftest

# the test groups
i=0
while [ "$i" -lt "${#TEST_STEPS[@]}" ]; do
  name=${TEST_STEPS[$i]}
  sel=()
  i=$((i + 1))
  while [ "${TEST_STEPS[$i]}" != - ]; do
    sel+=("${TEST_STEPS[$i]}")
    i=$((i + 1))
  done
  i=$((i + 1))
  env_pre=(env TRITON_PRINT_AUTOTUNING=0 ART_FAST_TRITON_CONFIGS="${GPU_CHECK_TRITON_CONFIGS:-first}")
  if [ "$name" = tests_misc ] && [ "$CUDA_BUILT" = 1 ]; then env_pre+=(ART_FAST_REQUIRE_CUDA_BUILD=1); fi
  if [ "$name" = tests_gpu_other ]; then OK_RC=5; fi  # 5: no test selected
  if [ "$name" = tests_cuda ] && [ "$CUDA_BUILT" != 1 ] && [ -z "$GPU_BLOCK" ]; then
    OK_RC=0
    record tests_cuda SKIP 0 "the extension has no CUDA kernels (see cuda_build)"
    continue
  fi
  PROBE_CMD=(env ART_FAST_TEST_TRITON_INTERPRET=0 "${PYTEST[@]}" --collect-only "${sel[@]}")
  PROBE_WHAT="collected"
  gpu_step "$name" "${env_pre[@]}" "${PYTEST[@]}" "${RUN_OPTS[@]}" \
    --junitxml="$WORK/$name.xml" "${sel[@]}"
done

# compute-sanitizer over benchmarks/sanitize_ops.py (a file of the repository, run with the
# repository importable: installed editable and on PYTHONPATH)
SAN_BACKENDS=(triton)
if [ "$CUDA_BUILT" = 1 ]; then SAN_BACKENDS=(cuda triton); fi
DRIVER=("$PY" "$ROOT/benchmarks/sanitize_ops.py" --backends "${SAN_BACKENDS[@]}")
if SAN=$(find_sanitizer); then
  SAN_MISSING=""
else
  SAN=compute-sanitizer SAN_MISSING="compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda*)"
fi
for tool in memcheck racecheck; do
  if [ -n "$SAN_MISSING" ] && [ "$DRY" = 0 ] && [ -z "$GPU_BLOCK" ]; then
    record "$tool" SKIP 0 "$SAN_MISSING"
    continue
  fi
  if [ "$tool" = memcheck ]; then
    PROBE_CMD=("$PY" "$ROOT/benchmarks/sanitize_ops.py" --device cpu --quick --dtypes float32)
    PROBE_WHAT="driver on CPU${SAN_MISSING:+ ($SAN_MISSING here)}"
  fi
  gpu_step "$tool" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYTHONPATH="$PYTHONPATH" \
    "$SAN" --tool "$tool" --error-exitcode 1 --print-limit 20 "${DRIVER[@]}"
done

# benchmarks
REP_MS=${GPU_CHECK_REP_MS:-20}
for op in "${OPS[@]}"; do
  short=${SHORT[$op]:-$op}
  bargs=(--device cuda --ops "$op" --rep-ms "$REP_MS" --out "$WORK/bench_ops_$short")
  PROBE_CMD=("$PY" -c "import sys; sys.path.insert(0, '$ROOT/benchmarks'); import bench_ops; \
a = bench_ops.parse_args(sys.argv[1:]); print('arguments parsed:', a.device, ' '.join(a.ops))" \
    "${bargs[@]}")
  PROBE_WHAT="bench_ops"
  gpu_step "bench_ops_$short" "$PY" "$ROOT/benchmarks/bench_ops.py" "${bargs[@]}"
done
TRAIN_BACKENDS=(torch triton)
if [ "$CUDA_BUILT" = 1 ]; then TRAIN_BACKENDS+=(cuda); fi
for cfg in tiny vitb16; do
  if [ "${HAVE_OPEN_CLIP:-0}" != 1 ] && [ -z "$GPU_BLOCK" ]; then
    record "bench_train_$cfg" SKIP 0 "open_clip is not importable (open_clip_torch is not installed and pip cannot download it here; pip install --no-index its wheel to run this step)"
    continue
  fi
  gpu_step "bench_train_$cfg" "$PY" "$ROOT/benchmarks/bench_train.py" --device cuda \
    --configs "$cfg" --backends "${TRAIN_BACKENDS[@]}" --cache "$WORK/textbank" \
    --out "$WORK/bench_train_$cfg"
done

finish
