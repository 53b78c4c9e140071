#!/usr/bin/env bash
# One device session's GPU work, in order of value, as few `run` calls as fit (15 minutes of device
# time, the machine's start included; one call <= 600 s). After `make gpu-wheels` here:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
#   run(command="STAGES=rest bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=...)  # if time is left
# Stages (STAGES, default "crf pipeline"), each bounded so that the call ends by SESSION_DEADLINE
# seconds (default 560; the second call: its timeout_s minus 20):
#   crf       build for sm_90, then the dense CRF on CUDA: its CUDA tests (ops/test_dense_crf.py,
#             ops/test_permutohedral_filter.py, irn/test_ir_label.py) and benchmarks
#             (gpu_check.sh with GPU_CHECK_K="crf or permutohedral or ir_label"), at most CRF_MAX s;
#   pipeline  gpu_pipeline.sh: torchrun (NCCL), the demo on CUDA, the GPU profile (PROFILE_IMAGES,
#             default 128; PROFILE_ITERS, default 10) in the time left;
#   rest      (second call, build kept) pydensecrf beside the CUDA CRF, then the other kernels'
#             CUDA tests and benchmarks and the training tests (gpu_check.sh), in the time left.
# DEVICE=cpu SKIP_BUILD=1 rehearses the scripts on a machine without a GPU (the CUDA tests skip; the
# demo and profile run on the CPU; DEMO_ARGS / PROFILE_IMAGES shrink them).
# Everything runs under $WORK (default /tmp/wsss_gpu). Into $OUT come back (at most 8 files):
# gpu_session.log, gpu_session_<stages>.tar.gz (every log and JSON of the call), and the figures to
# commit as benchmarks/results/<gpu>_<date>_*.json: crf_figures.json, pipeline_profile.json,
# demo_report.json (crf stage / pipeline stage), rest_figures.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
WORK="${WORK:-/tmp/wsss_gpu}"
STAGES="${STAGES:-crf pipeline}"
SESSION_DEADLINE="${SESSION_DEADLINE:-560}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT" "$WORK"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( SESSION_DEADLINE - $(elapsed) )); }
stamp() { echo "=== [session $(elapsed)s] $*"; }
export PYTHONUNBUFFERED=1 PYTHON="$PY"
unset DEADLINE  # each script below gets its own
CRF="crf or permutohedral or ir_label"

session() {
  # the carried wheels once (pydensecrf2 builds in the background meanwhile); the scripts below skip it
  local out="$OUT"; OUT="$WORK"; . benchmarks/carried_wheels.sh; OUT="$out"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  local rc=0 n
  for stage in $STAGES; do
    case "$stage" in
      crf)
        n=$(left); [ "$n" -gt "${CRF_MAX:-250}" ] && n="${CRF_MAX:-250}"
        stamp "crf: build, the dense CRF's CUDA tests and benchmarks (<= ${n}s)"
        OUT="$WORK/crf" DEADLINE="$n" GPU_CHECK_K="$CRF" ORACLE=0 SANITIZE=0 TRAIN_TESTS=0 \
          bash benchmarks/gpu_check.sh || rc=1
        cp "$WORK/crf/figures.json" "$OUT/crf_figures.json" 2>/dev/null ;;
      pipeline)
        n=$(left)
        stamp "pipeline: torchrun, demo, profile (<= ${n}s)"
        OUT="$WORK/pipeline" WORK="$WORK/runs" DEADLINE="$n" SKIP_BUILD=1 PROFILE_IMAGES="${PROFILE_IMAGES:-128}" \
          PROFILE_ITERS="${PROFILE_ITERS:-10}" bash benchmarks/gpu_pipeline.sh || rc=1
        cp "$WORK/pipeline/pipeline_profile.json" "$WORK/pipeline/demo_report.json" "$OUT/" 2>/dev/null ;;
      rest)
        n=$(left)
        stamp "rest: pydensecrf beside the CUDA CRF (<= ${n}s)"
        OUT="$WORK/oracle" DEADLINE="$n" SKIP_BUILD=1 GPU_CHECK_K="dense_crf" RUN_TESTS=0 RUN_BENCH=0 \
          SANITIZE=0 TRAIN_TESTS=0 bash benchmarks/gpu_check.sh || rc=1
        n=$(left)
        stamp "rest: the other kernels' CUDA tests and benchmarks, training tests (<= ${n}s)"
        OUT="$WORK/rest" DEADLINE="$n" SKIP_BUILD=1 GPU_CHECK_K="not ($CRF)" ORACLE=0 \
          bash benchmarks/gpu_check.sh || rc=1
        "$PY" benchmarks/summarize.py $(find "$WORK/oracle" "$WORK/rest" -maxdepth 1 -name 'bench*.json' -size +0) \
          --out "$OUT/rest_figures.json" > /dev/null 2>&1 ;;
      *) echo "unknown stage '$stage' (crf | pipeline | rest)"; rc=1 ;;
    esac
  done
  stamp "done (rc=$rc); back in \$OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
  return "$rc"
}

# a pipeline, not `exec > >(tee)`: the log is complete when the call returns
session 2>&1 | tee "$WORK/gpu_session.log"
rc=${PIPESTATUS[0]}
cp "$WORK/gpu_session.log" "$OUT/"
tar -czf "$OUT/gpu_session_${STAGES// /_}.tar.gz" -C "$WORK" --exclude=runs --exclude='*.pt' \
  $(cd "$WORK" && ls -d gpu_session.log pydensecrf_build.log crf pipeline oracle rest 2>/dev/null)
exit "$rc"
