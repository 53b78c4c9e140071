#!/usr/bin/env bash
# GPU check for an H100/H200 machine (torch 2.11 cu130, nvcc, ninja; no network), <= 7 minutes:
#   1. builds wsss_fast._C for sm_90 only (SKIP_BUILD=1 keeps a build already there),
#   2. runs the CUDA tests (every test with cuda in its name or parameters: -m cuda) of tests/ops
#      (the dense CRF and permutohedral filter too), tests/nn, tests/cam and
#      tests/irn/test_ir_label.py, in 4 pytest-xdist workers when xdist is there,
#   3. runs the CUDA benchmarks (random_walk separately; pydensecrf's side of the CRF groups
#      last, one round) and prints the ratio table,
#   4. if time is left (and SANITIZE is not 0), runs every kernel once under compute-sanitizer,
#   5. runs the CUDA cases of the training tests (TRAIN_TESTS=0 skips them): AMP of train-cls /
#      train-seg (float16 + GradScaler, its state through a resume) and train-irn (bf16,
#      resumed on the GPU), and train-seg under `torchrun --nproc_per_node 1`.
# Under $OUT (default ./gpu_out): gpu_check.log, build.log, tests.log, bench.log,
# bench.json, bench_rw.json, bench_oracle.json, figures.json, sanitize.log, train_tests.log.
# RUN_TESTS=0 / RUN_BENCH=0 / ORACLE=0 / SANITIZE=0 / TRAIN_TESTS=0 leave a part out; DEADLINE=S
# shortens every timeout so that the script ends S seconds after its start (gpu_session.sh).
# GPU_CHECK_K="drop_block2d" narrows the tests and benchmarks to a pytest -k expression
# (a second run after a kernel change, within one session's device time).
# Packages missing there (grad-cam, ttach, segmentation-models-pytorch, pydicom, expecttest)
# travel as wheels in .whl/ (`make gpu-wheels` here), installed with --no-index into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
exec > >(tee "$OUT/gpu_check.log") 2>&1
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
stamp() { echo "=== [$(elapsed)s] $*"; }
export PYTHONUNBUFFERED=1

. benchmarks/carried_wheels.sh  # .whl/ (make gpu-wheels) -> /tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"

. benchmarks/gpu_build.sh  # budget(); wsss_fast._C built for sm_90 (or kept) and checked
# A C++ error thrown in a kernel must reach Python as a RuntimeError, not crash.
"$PY" benchmarks/gpu_error_smoke.py || echo "WARNING: C++ errors crash this build; the error tests will fail"

XDIST=""; "$PY" -c "import xdist" 2>/dev/null && XDIST="-n 4"  # 4 workers share the GPU
KSEL=(); [ -n "${GPU_CHECK_K:-}" ] && KSEL=(-k "$GPU_CHECK_K")
test_rc=0 bench_rc=0 rw_rc=0 oracle_rc=0 train_rc=0
if [ "${RUN_TESTS:-1}" != 0 ]; then
stamp "CUDA tests"
TESTS="tests/ops/test_dense_crf.py tests/ops/test_permutohedral_filter.py tests/irn/test_ir_label.py
       tests/ops/test_drop_block2d.py tests/ops/test_path_affinity.py tests/ops/test_gradcampp_weights.py
       tests/ops/test_weighted_cam.py tests/nn tests/cam tests/ops/test_random_walk.py"
wait_pydensecrf  # carried_wheels.sh: the oracle, when it is built here, before the tests that use it
# shellcheck disable=SC2086
timeout "$(budget "${TEST_TIMEOUT:-170}")" "$PY" -m pytest $TESTS -m cuda "${KSEL[@]}" $XDIST -v --tb=short -p no:cacheprovider \
  --continue-on-collection-errors -o addopts="--import-mode=importlib" > "$OUT/tests.log" 2>&1
test_rc=$?; [ "$test_rc" -eq 5 ] && test_rc=0  # 5: GPU_CHECK_K selected none
echo "tests rc=$test_rc: $(grep -c ' PASSED' "$OUT/tests.log") passed, $(grep -c ' FAILED' "$OUT/tests.log") failed, $(grep -c ' ERROR' "$OUT/tests.log") errors"
grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | cut -c1-300 | head -40
[ "$test_rc" -ne 0 ] && { grep -E "^E  " "$OUT/tests.log" | cut -c1-200 | head -40; tail -3 "$OUT/tests.log"; }
fi

bench() {  # bench NAME TIMEOUT -k EXPR
  local json="$OUT/$1.json" t="$2"; shift 2
  timeout "$(budget "$t")" "$PY" -m pytest benchmarks "$@" --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="$json" --benchmark-min-time=0.05 --benchmark-max-time=0.5 \
    --benchmark-columns=min,median,rounds -o addopts="--import-mode=importlib" >> "$OUT/bench.log" 2>&1
}
SEL="${GPU_CHECK_K:+ and ($GPU_CHECK_K)}"
if [ "${RUN_BENCH:-1}" != 0 ]; then
stamp "CUDA benchmarks"
bench bench "${BENCH_TIMEOUT:-150}" -k "cuda and not random_walk and not pydensecrf$SEL"
bench_rc=$?; [ "$bench_rc" -eq 5 ] && bench_rc=0  # 5: nothing selected
stamp "CUDA random_walk benchmarks"
bench bench_rw 90 -k "cuda and random_walk$SEL"
rw_rc=$?; [ "$rw_rc" -eq 5 ] && rw_rc=0
fi
if [ "${ORACLE:-1}" != 0 ]; then
# pydensecrf on one core beside the CUDA CRF (about 16 s + 37 s): last, in its own file
stamp "pydensecrf beside the CUDA dense CRF"
wait_pydensecrf
bench bench_oracle "${ORACLE_TIMEOUT:-90}" -k "cuda and pydensecrf$SEL"
oracle_rc=$?; [ "$oracle_rc" -eq 5 ] && oracle_rc=0
fi
[ -f "$OUT/bench.log" ] && grep -E "^(FAILED|ERROR)|Error" "$OUT/bench.log" | head -20

if [ "${SANITIZE:-1}" != 0 ] && command -v compute-sanitizer >/dev/null && [ "$(elapsed)" -lt "${SANITIZE_BEFORE:-300}" ]; then
  stamp "compute-sanitizer memcheck"
  timeout "$(budget 60)" compute-sanitizer --error-exitcode 9 --print-limit 20 "$PY" benchmarks/gpu_sanitize.py \
    > "$OUT/sanitize.log" 2>&1
  echo "sanitize rc=$?"; grep -E "ERROR SUMMARY|Invalid|sanitize:" "$OUT/sanitize.log" | head -12
fi

if [ "${TRAIN_TESTS:-1}" != 0 ]; then
stamp "CUDA training tests (AMP, torchrun)"
TRAIN_FILES="tests/cls/test_train_amp.py tests/seg/test_resume_amp.py tests/seg/test_train_ddp.py
             tests/irn/test_train_resume.py"
# shellcheck disable=SC2086
timeout "$(budget "${TRAIN_TEST_TIMEOUT:-120}")" "$PY" -m pytest $TRAIN_FILES -m cuda "${KSEL[@]}" $XDIST -v --tb=short \
  -p no:cacheprovider -o addopts="--import-mode=importlib" > "$OUT/train_tests.log" 2>&1
train_rc=$?; [ "$train_rc" -eq 5 ] && train_rc=0  # 5: GPU_CHECK_K selected none of them
echo "training tests rc=$train_rc: $(grep -c ' PASSED' "$OUT/train_tests.log") passed, $(grep -c ' FAILED' "$OUT/train_tests.log") failed, $(grep -c ' ERROR' "$OUT/train_tests.log") errors"
grep -E "^(FAILED|ERROR) " "$OUT/train_tests.log" | cut -c1-300 | head -20
[ "$train_rc" -ne 0 ] && { grep -E "^E  " "$OUT/train_tests.log" | cut -c1-200 | head -30; tail -3 "$OUT/train_tests.log"; }
fi

stamp "summary"
# (a JSON is empty when GPU_CHECK_K selected none of its benchmarks)
mapfile -t JSONS < <(find "$OUT" -maxdepth 1 -name 'bench*.json' -size +0 | sort)
[ "${#JSONS[@]}" -gt 0 ] && "$PY" benchmarks/summarize.py "${JSONS[@]}" --out "$OUT/figures.json"
echo "tests rc=$test_rc bench rc=$bench_rc rw rc=$rw_rc oracle rc=$oracle_rc train rc=$train_rc total $(elapsed)s"
exit $(( test_rc != 0 || bench_rc != 0 || rw_rc != 0 || oracle_rc != 0 || train_rc != 0 ))
