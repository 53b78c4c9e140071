# Sourced by gpu_check.sh and gpu_pipeline.sh (from the repository root, with $PY, $OUT, elapsed and
# stamp set): budget(), then wsss_fast._C built for sm_90 (a build already there is kept with
# SKIP_BUILD=1) and checked: the script stops unless the compiled ops load, with their CUDA kernels
# unless DEVICE=cpu (a rehearsal); without them every op would fall back to the references.

# budget N: N seconds, or fewer so that the script ends by DEADLINE seconds after its start (if set)
budget() {
  local t="$1" l
  if [ -n "${DEADLINE:-}" ]; then l=$(( DEADLINE - $(elapsed) - 3 )); [ "$l" -lt "$t" ] && t="$l"; fi
  [ "$t" -lt 1 ] && t=1
  echo "$t"
}

export TORCH_CUDA_ARCH_LIST="9.0" CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" MAX_JOBS="${MAX_JOBS:-16}" FORCE_CUDA=1
if [ "${SKIP_BUILD:-0}" != 1 ] || ! ls wsss_fast/_C*.so >/dev/null 2>&1; then
  stamp "build (sm_90)"
  # The image sets CC/CXX to /opt/gcc (g++ 13.3.0 "g++-real"). Built with it, every C++ error a
  # kernel raises (TORCH_CHECK), on the CPU and on CUDA alike, killed the process with SIGSEGV
  # instead of raising RuntimeError (seen 2026-11-26 on an H100 machine); the system g++ 13.3.0
  # builds an extension whose errors reach Python. Prefer the system compiler when there is one.
  if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
  echo "CC=${CC:-} CXX=${CXX:-} ($(${CXX:-c++} --version | head -1))"
  # pyproject.toml's license is an SPDX string, which setuptools reads from 77.0 on; where the
  # image's setuptools is older, the build (only) uses the one carried in .whl/build/.
  build_path="${PYTHONPATH:-}"
  if ! "$PY" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null; then
    if ls .whl/build/setuptools-*.whl >/dev/null 2>&1 && "$PY" -m pip install -q --no-index --no-deps \
        --no-compile --no-cache-dir --upgrade --target /tmp/build_site .whl/build/setuptools-*.whl; then
      build_path="/tmp/build_site${build_path:+:$build_path}"
    else
      echo "WARNING: setuptools < 77 and none carried in .whl/build (make gpu-wheels): the build will fail"
    fi
  fi
  PYTHONPATH="$build_path" "$PY" -c "import setuptools; print('setuptools', setuptools.__version__, 'from', setuptools.__file__)"
  rm -rf build wsss_fast/_C*.so
  if ! PYTHONPATH="$build_path" timeout "$(budget "${BUILD_TIMEOUT:-240}")" "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -30; tail -20 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import json, sys, wsss_fast; i = wsss_fast.extension_info(); print(json.dumps(i)); \
sys.exit(0 if i['compiled_ops_loaded'] and ('${DEVICE:-cuda}' == 'cpu' or i['cuda_kernels_compiled'] and i['cuda_available']) else 1)" \
  || { echo "NO CUDA KERNELS"; exit 1; }
