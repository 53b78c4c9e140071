# Sourced by gpu_check.sh and gpu_pipeline.sh (from the repository root, with $PY and stamp set):
# installs the wheels `make gpu-wheels` carries in .whl/ into /tmp/site with --no-index (the GPU
# machine has no network) and puts /tmp/site on PYTHONPATH.
if ls .whl/*.whl >/dev/null 2>&1; then
  stamp "installing carried wheels"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# pydensecrf2 is compiled: its wheel fits only the Python it was built for (the oracle tests skip
# without it)
if ls .whl/native/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/native/*.whl \
    || echo "the carried pydensecrf2 wheel does not fit $("$PY" -V): pydensecrf comparisons skip"
fi
