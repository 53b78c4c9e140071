#!/usr/bin/env bash
# The whole pipeline on one H100/H200 (torch cu130, nvcc; no network), <= 8 minutes with the build:
#   1. builds wsss_fast._C for sm_90 (as gpu_check.sh does; skipped with SKIP_BUILD=1 when a
#      build is already there),
#   2. `torchrun --nproc_per_node 1` train-cls and make-cam on the demo config (the NCCL path),
#   3. `wsss-fast demo --device cuda` (AMP on): wall time, and its report against the CPU run's
#      figures (docs/demo.md; each mIoU-pos row within DEMO_TOL points, default 2.0),
#   4. the GPU pipeline profile (benchmarks/pipeline_profile.py --preset gpu --reference:
#      256 synthetic 1024-px DICOMs at 512 px, the paper's models and settings, 20 iterations per
#      training step), its table and the projection of the full SIIM run.
# Under $OUT (default ./gpu_out): gpu_pipeline.log, build.log, ddp.log, demo.log, demo_report.json,
# profile.log, pipeline_profile.json. Commit the figures as
# benchmarks/results/<gpu>_<date>_pipeline_profile.json.
# PROFILE_IMAGES / PROFILE_ITERS shrink the profile when the session has little device time left.
# Wheels the machine lacks travel in .whl/ (`make gpu-wheels` here), installed into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
exec > >(tee "$OUT/gpu_pipeline.log") 2>&1
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
stamp() { echo "=== [$(elapsed)s] $*"; }
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10

. benchmarks/carried_wheels.sh  # .whl/ (make gpu-wheels) -> /tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc

if [ "${SKIP_BUILD:-0}" != 1 ] || ! ls wsss_fast/_C*.so >/dev/null 2>&1; then
  stamp "build (sm_90)"
  export TORCH_CUDA_ARCH_LIST="9.0" CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" MAX_JOBS="${MAX_JOBS:-16}" FORCE_CUDA=1
  # the image's /opt/gcc g++ builds an extension whose C++ errors crash the process (gpu_check.sh)
  if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
  rm -rf build wsss_fast/_C*.so
  if ! timeout "${BUILD_TIMEOUT:-240}" "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -30; tail -20 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import json, wsss_fast; print(json.dumps(wsss_fast.extension_info()))"
WSSS=("$PY" -m wsss_fast.cli.main)

stamp "torchrun --nproc_per_node 1: train-cls, make-cam (NCCL)"
DDP="$OUT/ddp_run"; rm -rf "$DDP"
DEMO_SMALL=(--config demo --out "$DDP" device=cuda dataset.synthetic.num_images=64 cls.epochs=1
            "cam.splits=[val]")
"$PY" -c "import sys; sys.argv=['x']; from wsss_fast.config import load_config; from wsss_fast.cli.pipeline import prepare_demo_data; from pathlib import Path; prepare_demo_data(load_config('demo', ['dataset.synthetic.num_images=64']), Path('$DDP'))" > "$OUT/ddp.log" 2>&1
ddp_rc=0
for step in train-cls make-cam; do
  NCCL_DEBUG=INFO timeout 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m wsss_fast.cli.main "$step" \
    "${DEMO_SMALL[@]}" dataset.root="$DDP/data" >> "$OUT/ddp.log" 2>&1 || { ddp_rc=$?; echo "torchrun $step rc=$ddp_rc"; }
done
grep -q "NCCL INFO" "$OUT/ddp.log" && echo "NCCL initialized (NCCL INFO lines in ddp.log)" \
  || { ddp_rc=1; echo "no NCCL INFO line: the NCCL path did not run"; }
[ -f "$DDP/cls/.done" ] && [ -f "$DDP/cam/.done" ] && echo "torchrun train-cls + make-cam: done" \
  || { ddp_rc=1; echo "torchrun outputs missing"; tail -30 "$OUT/ddp.log"; }

stamp "demo on the GPU (AMP)"
rm -rf "$OUT/demo"
t0=$(date +%s)
timeout "${DEMO_TIMEOUT:-150}" "${WSSS[@]}" demo --device cuda --out "$OUT/demo" > "$OUT/demo.log" 2>&1
demo_rc=$?; demo_s=$(( $(date +%s) - t0 ))
echo "demo rc=$demo_rc in ${demo_s}s"; tail -12 "$OUT/demo.log"
cp "$OUT/demo/report.json" "$OUT/demo_report.json" 2>/dev/null
"$PY" - "$OUT/demo_report.json" "${DEMO_TOL:-2.0}" "$demo_s" <<'EOF' || demo_rc=1
import json, sys
# the CPU run of docs/demo.md: (split, step) -> mIoU over positive images, in points
cpu = {("val", "cam"): 57.96, ("val", "irnet"): 61.47, ("val", "seg"): 62.14,
       ("test", "cam"): 58.54, ("test", "irnet"): 62.42, ("test", "seg"): 62.63}
r, tol, secs = json.load(open(sys.argv[1])), float(sys.argv[2]), int(sys.argv[3])
bad = []
for (split, step), want in cpu.items():
    got = 100 * r["splits"][split][step]["miou_pos"]
    print(f"demo {split} {step}: GPU {got:.2f} CPU {want:.2f} diff {got - want:+.2f}")
    bad += [f"{split}/{step}"] if abs(got - want) > tol else []
print(f"demo wall {secs}s (goal < 120 s); rows beyond {tol} points: {bad or 'none'}")
sys.exit(1 if bad else 0)
EOF

stamp "pipeline profile (GPU preset)"
timeout "${PROFILE_TIMEOUT:-240}" "$PY" benchmarks/pipeline_profile.py --preset gpu --device cuda --reference \
  --out /tmp/wsss_profile --json "$OUT/pipeline_profile.json" \
  ${PROFILE_IMAGES:+--images $PROFILE_IMAGES} ${PROFILE_ITERS:+--max-iters $PROFILE_ITERS} > "$OUT/profile.log" 2>&1
prof_rc=$?
grep -E "^\[profile\]|^\||^DICOM|^machine|^[0-9]+ images|Error|error" "$OUT/profile.log" | grep -v "it/s" | tail -45

stamp "summary"
echo "ddp rc=$ddp_rc demo rc=$demo_rc profile rc=$prof_rc total $(elapsed)s"
exit $(( ddp_rc != 0 || demo_rc != 0 || prof_rc != 0 ))
