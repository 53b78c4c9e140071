# Sourced by gpu_check.sh, gpu_pipeline.sh and gpu_session.sh (from the repository root, with
# $PY, $OUT and stamp set): installs the wheels `make gpu-wheels` carries in .whl/ into /tmp/site
# with --no-index (the GPU machine has no network) and puts /tmp/site on PYTHONPATH.
# Sourced again (by a script gpu_session.sh runs), it does nothing.
if [ -z "${WSSS_CARRIED_WHEELS:-}" ]; then
  export WSSS_CARRIED_WHEELS=1
  if ls .whl/*.whl >/dev/null 2>&1; then
    stamp "installing carried wheels"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # pydensecrf2 (the CRF oracle) is compiled: its wheel fits only the Python it was built for. Where
  # it does not fit, it is built here from its sdist (.whl/src, with the Cython 0.29 it asks for) in
  # the background, about 30 s on one core; wait_pydensecrf waits for it.
  if PYTHONPATH=/tmp/site "$PY" -c "import pydensecrf.densecrf" 2>/dev/null; then
    echo "pydensecrf2: already in /tmp/site"
  elif ls .whl/native/*.whl >/dev/null 2>&1 && "$PY" -m pip install -q --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target /tmp/site .whl/native/*.whl 2>/dev/null; then
    echo "pydensecrf2: the carried wheel"
  elif ls .whl/src/pydensecrf2-*.tar.gz .whl/src/[Cc]ython-0.29*.whl >/dev/null 2>&1; then
    echo "pydensecrf2: building it from .whl/src for $("$PY" -V) in the background"
    (
      set -e
      "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/cython029 .whl/src/[Cc]ython-0.29*.whl
      PYTHONPATH=/tmp/cython029 "$PY" -m pip wheel -q --no-build-isolation --no-index --no-deps \
        -w /tmp/pydensecrf_wheel .whl/src/pydensecrf2-*.tar.gz
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        /tmp/pydensecrf_wheel/pydensecrf2-*.whl
    ) > "$OUT/pydensecrf_build.log" 2>&1 &
    export WSSS_PYDENSECRF_PID=$!
  else
    echo "pydensecrf2: none carried (make gpu-wheels): the pydensecrf comparisons skip"
  fi
fi

wait_pydensecrf() {  # until the background pydensecrf2 build (if any) has ended, at most 150 s; say how
  local pid="${WSSS_PYDENSECRF_PID:-}" n=0
  [ -n "$pid" ] || return 0
  while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 150 ]; do sleep 1; n=$((n + 1)); done  # a child or not
  if "$PY" -c "import pydensecrf.densecrf" 2>/dev/null; then
    echo "pydensecrf2: built for $("$PY" -V)"
  else
    echo "pydensecrf2: not built (the pydensecrf comparisons skip):"; tail -5 "$OUT/pydensecrf_build.log"
  fi
}
