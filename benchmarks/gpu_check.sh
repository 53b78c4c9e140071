#!/usr/bin/env bash
# GPU check for an H100/H200 machine (torch 2.11 cu130, nvcc, ninja; no network), <= 6 minutes:
#   1. builds wsss_fast._C for sm_90 only,
#   2. runs the CUDA tests (CUDA-parametrized cases: -m cuda),
#   3. runs the CUDA benchmarks and prints the ratio table.
# Log, test report, benchmark JSON and the figures JSON are written under $OUT (default ./gpu_out).
# Packages missing there (grad-cam, ttach, segmentation-models-pytorch) travel as wheels in .whl/
# (`make gpu-wheels` here), installed with --no-index into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
exec > >(tee "$OUT/gpu_check.log") 2>&1
start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - start ))s] $*"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  stamp "installing carried wheels"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

stamp "build (sm_90)"
export TORCH_CUDA_ARCH_LIST="9.0" CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" MAX_JOBS="${MAX_JOBS:-16}" FORCE_CUDA=1
rm -rf build wsss_fast/_C*.so
if ! timeout 240 "$PY" setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import json, wsss_fast; print(json.dumps(wsss_fast.extension_info()))"

stamp "CUDA tests"
timeout 150 "$PY" -m pytest tests -m cuda -q -x -p no:cacheprovider --junitxml="$OUT/tests.xml" -o addopts="--import-mode=importlib" 2>&1 | tail -25
test_rc=${PIPESTATUS[0]}

stamp "CUDA benchmarks"
timeout 170 "$PY" -m pytest benchmarks -k cuda --benchmark-only -q -p no:cacheprovider \
  --benchmark-json="$OUT/bench.json" --benchmark-min-time=0.05 --benchmark-max-time=1.0 \
  --benchmark-columns=min,median,rounds -o addopts="--import-mode=importlib" > "$OUT/bench.log" 2>&1
bench_rc=$?
tail -5 "$OUT/bench.log"
stamp "summary"
[ -f "$OUT/bench.json" ] && "$PY" benchmarks/summarize.py "$OUT/bench.json" --out "$OUT/figures.json"
echo "tests rc=$test_rc bench rc=$bench_rc total $(( $(date +%s) - start ))s"
exit $(( test_rc != 0 || bench_rc != 0 ))
