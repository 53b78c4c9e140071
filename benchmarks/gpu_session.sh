#!/usr/bin/env bash
# One device session's GPU work, in order of value, as few `run` calls as fit (15 minutes of device
# time, the machine's start included; one call <= 600 s). After `make gpu-wheels` here:
#   run(command="SESSION_DEADLINE=560 bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
#   run(command="STAGES=rest SESSION_DEADLINE=... bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=...)
# (the second call if time is left). Stages (STAGES, default "pipeline amp"), each bounded so that the
# call ends by SESSION_DEADLINE seconds: the call's timeout_s minus 40 (default 560; lower both when
# `status` shows less device time), so that the logs and figures reach $OUT before the call is stopped.
# A stage with too little time left says so and is skipped.
#   pipeline  gpu_pipeline.sh: the build for sm_90 (unless one is there), torchrun (NCCL), the demo on
#             CUDA, the GPU profile (PROFILE_IMAGES, default 256: with SIIM's share of positives, 57 of them
#             run make-cam's and make-sem-seg's networks; PROFILE_ITERS, default 10);
#   amp       make-cam under bfloat16 autocast (cam.amp): the CUDA tests of tests/cam, tests/seg,
#             tests/irn, random_walk's and the training loops' waits (tests/cls/test_train.py,
#             tests/engine), the sweep's counts (tests/metrics/test_segmentation.py) and the CRF
#             unary's label-range read (tests/ops/test_dense_crf.py); the
#             paper-setting CAM benchmark in float32, bfloat16 and
#             bfloat16 channels-last;
#             the pipeline stage's demo rerun from make-cam with cam.amp=true (paired figures); the
#             profile again with cam.amp=true (without the reference code), in the time left;
#   crf       build, then the dense CRF on CUDA: its CUDA tests (ops/test_dense_crf.py,
#             ops/test_permutohedral_filter.py, irn/test_ir_label.py) and benchmarks
#             (gpu_check.sh with GPU_CHECK_K="crf or permutohedral or ir_label"), at most CRF_MAX s;
#   rest      (second call, build kept) pydensecrf beside the CUDA CRF, then the other kernels'
#             CUDA tests and benchmarks and the training tests (gpu_check.sh), in the time left.
# DEVICE=cpu SKIP_BUILD=1 rehearses the scripts on a machine without a GPU (the CUDA tests skip; the
# demo and profile run on the CPU; DEMO_ARGS / PROFILE_IMAGES shrink them).
# Everything runs under $WORK (default /tmp/wsss_gpu). Into $OUT come back (at most 8 files):
# gpu_session.log, gpu_session_<stages>.tar.gz (every log and JSON of the call), and the figures to
# commit as benchmarks/results/<gpu>_<date>_*.json: crf_figures.json, pipeline_profile.json,
# demo_report.json (crf stage / pipeline stage), amp_figures.json, demo_amp_report.json,
# pipeline_profile_amp.json (amp stage), rest_figures.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
WORK="${WORK:-/tmp/wsss_gpu}"
STAGES="${STAGES:-pipeline amp}"
PROFILE_IMAGES="${PROFILE_IMAGES:-256}" PROFILE_ITERS="${PROFILE_ITERS:-10}"  # both profiles
SESSION_DEADLINE="${SESSION_DEADLINE:-560}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT" "$WORK"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( SESSION_DEADLINE - $(elapsed) )); }
stamp() { echo "=== [session $(elapsed)s] $*"; }
lim() { local v=$(( $1 )); echo $(( v < 1 ? 1 : v )); }  # a timeout of at least 1 s: `timeout 0` has none
export PYTHONUNBUFFERED=1 PYTHON="$PY"
unset DEADLINE  # each script below gets its own
CRF="crf or permutohedral or ir_label"

amp_stage() {  # the CUDA tests of the code this stage measures, cam.amp's benchmark, demo and profile
  local n="$1" a="$WORK/amp" t0 demo="$WORK/runs/demo" amp_demo="$WORK/runs/demo_amp" xd=""
  [ "$n" -ge "${AMP_MIN:-90}" ] || { echo "amp: ${n}s left (< ${AMP_MIN:-90}s), skipped"; return 0; }
  mkdir -p "$a"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import xdist" 2>/dev/null && xd="-n 4"
  # shellcheck disable=SC2086
  timeout "$(lim n*3/10)" "$PY" -m pytest tests/cam tests/seg tests/irn tests/ops/test_random_walk.py \
    tests/cls/test_train.py tests/engine tests/metrics/test_segmentation.py \
    tests/ops/test_dense_crf.py::test_unary_from_labels_reads_the_range_once -m cuda $xd -v \
    --tb=short -p no:cacheprovider -o addopts="--import-mode=importlib" > "$a/tests.log" 2>&1
  echo "amp tests rc=$?: $(grep -c ' PASSED' "$a/tests.log") passed, $(grep -c ' FAILED' "$a/tests.log") failed"
  grep -E "^(FAILED|ERROR) |^E  " "$a/tests.log" | cut -c1-200 | head -20
  timeout "$(lim n/5)" "$PY" -m pytest benchmarks/bench_cam_extractor.py -k "paper" --benchmark-only -q \
    -p no:cacheprovider --benchmark-json="$a/bench_amp.json" --benchmark-columns=min,median,rounds \
    -o addopts="--import-mode=importlib" > "$a/bench.log" 2>&1
  [ -s "$a/bench_amp.json" ] && "$PY" benchmarks/summarize.py "$a/bench_amp.json" --out "$OUT/amp_figures.json" 2>&1 | tail -4
  if [ -f "$demo/report.json" ]; then  # paired: the pipeline stage's demo, again from make-cam with cam.amp
    rm -rf "$amp_demo"; cp -r "$demo" "$amp_demo"; t0=$(date +%s)
    timeout "$(lim n*2/5)" "$PY" -m wsss_fast.cli.main demo --device "${DEVICE:-cuda}" --out "$amp_demo" \
      --from make-cam cam.amp=true ${DEMO_ARGS:-} > "$a/demo_amp.log" 2>&1
    echo "demo from make-cam with cam.amp=true: rc=$? in $(( $(date +%s) - t0 ))s"
    cp "$amp_demo/report.json" "$OUT/demo_amp_report.json" 2>/dev/null
    "$PY" - "$demo/report.json" "$amp_demo/report.json" <<'EOF'
import json, sys
a, b = (json.load(open(p))["splits"] for p in sys.argv[1:])
for split in a:
    for step in ("cam", "irnet", "seg"):
        x, y = a[split].get(step, {}).get("miou_pos"), b.get(split, {}).get(step, {}).get("miou_pos")
        if x is not None and y is not None:
            print(f"demo {split} {step} mIoU pos: float32 {100 * x:.2f}, cam.amp {100 * y:.2f} ({100 * (y - x):+.2f})")
EOF
  fi
  n=$(left)
  # a fresh profile writes its DICOMs (~20 s per 128 images on the H200) and trains the classifier before make-cam
  [ "$n" -ge "${AMP_PROFILE_MIN:-100}" ] || { echo "amp profile: ${n}s left (< ${AMP_PROFILE_MIN:-100}s), skipped"; return 0; }
  OUT="$WORK/amp_profile" WORK="$WORK/runs_amp" DEADLINE="$n" SKIP_BUILD=1 PARTS=profile PROFILE_REFERENCE=0 \
    PROFILE_IMAGES="$PROFILE_IMAGES" PROFILE_ITERS="$PROFILE_ITERS" \
    PROFILE_ARGS="${PROFILE_ARGS:-} cam.amp=true" bash benchmarks/gpu_pipeline.sh
  local prc=$?
  cp "$WORK/amp_profile/pipeline_profile.json" "$OUT/pipeline_profile_amp.json" 2>/dev/null
  return "$prc"
}

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
        OUT="$WORK/pipeline" WORK="$WORK/runs" DEADLINE="$n" SKIP_BUILD=1 PROFILE_IMAGES="$PROFILE_IMAGES" \
          PROFILE_ITERS="$PROFILE_ITERS" bash benchmarks/gpu_pipeline.sh || rc=1
        cp "$WORK/pipeline/pipeline_profile.json" "$WORK/pipeline/demo_report.json" "$OUT/" 2>/dev/null ;;
      amp)
        n=$(left)
        stamp "amp: make-cam under bfloat16 autocast (cam.amp): CUDA tests, benchmark, demo rerun, profile (<= ${n}s)"
        amp_stage "$n" || rc=1 ;;
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
      *) echo "unknown stage '$stage' (crf | pipeline | amp | rest)"; rc=1 ;;
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
  $(cd "$WORK" && ls -d gpu_session.log pydensecrf_build.log crf pipeline amp amp_profile oracle rest 2>/dev/null)
exit "$rc"
