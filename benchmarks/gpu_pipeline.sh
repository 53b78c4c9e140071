#!/usr/bin/env bash
# The whole pipeline on one H100/H200 (torch cu130, nvcc; no network), <= 8 minutes with the build:
#   1. builds wsss_fast._C for sm_90 (as gpu_check.sh does; skipped with SKIP_BUILD=1 when a
#      build is already there),
#   2. `torchrun --nproc_per_node 1` train-cls and make-cam on the demo config (the NCCL path),
#   3. `wsss-fast demo --device cuda` (AMP on): wall time, and its report against the CPU sweeps
#      (DEMO_REFS, comma-separated; default the two five-seed sweeps of docs/demo.md, each on its
#      own machine: each mIoU-pos row within the pooled runs' mean +- DEMO_SIGMAS std, default 2),
#   4. the GPU pipeline profile (benchmarks/pipeline_profile.py --preset gpu --reference:
#      256 synthetic 1024-px DICOMs at 512 px, the paper's models and settings, 20 iterations per
#      training step), its table and the projection of the full SIIM run.
# Under $OUT (default ./gpu_out) only logs and figures: gpu_pipeline.log, build.log, ddp.log,
# demo.log, demo_report.json, profile.log, pipeline_profile.json; the runs themselves under $WORK
# (default /tmp/wsss_gpu_pipeline). Commit the figures as
# benchmarks/results/<gpu>_<date>_pipeline_profile.json.
# PROFILE_IMAGES / PROFILE_ITERS shrink the profile when the session has little device time left
# (pipeline_profile.json is rewritten after every step, so a timeout keeps the steps done);
# PROFILE_TRACE (default 2): torch.profiler over that many batches of each step (0: none), its top
# host ops and GPU kernel share in the JSON and log;
# PARTS (default "ddp demo profile") picks the parts after the build; PROFILE_REFERENCE=0 leaves out
# the reference code's timings; PROFILE_ARGS and DEMO_ARGS pass more arguments (config overrides
# key=value for both); DEADLINE=S shortens every timeout so that the
# script ends S seconds after its start; DEVICE=cpu rehearses it without a GPU.
# Wheels the machine lacks travel in .whl/ (`make gpu-wheels` here), installed into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
DEVICE="${DEVICE:-cuda}"  # cpu: a rehearsal of the script on a machine without a GPU (docs/pipeline_profile.md)
WORK="${WORK:-/tmp/wsss_gpu_pipeline}"
DEMO_REFS_DEFAULT="benchmarks/results/cpu2core_2026-12-01_demo_seeds.json,benchmarks/results/cpu2core-epyc_2026-12-01_demo_seeds.json"
mkdir -p "$OUT" "$WORK"
PY="${PYTHON:-python3}"
exec > >(tee "$OUT/gpu_pipeline.log") 2>&1
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
stamp() { echo "=== [$(elapsed)s] $*"; }
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10

. benchmarks/carried_wheels.sh  # .whl/ (make gpu-wheels) -> /tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc

. benchmarks/gpu_build.sh  # budget(); wsss_fast._C built for sm_90 (or kept) and checked
WSSS=("$PY" -m wsss_fast.cli.main)

has() { [[ " ${PARTS:-ddp demo profile} " == *" $1 "* ]]; }
ddp_rc=0 demo_rc=0 prof_rc=0

if has ddp; then
stamp "torchrun --nproc_per_node 1: train-cls, make-cam (NCCL)"
DDP="$WORK/ddp_run"; rm -rf "$DDP"
DEMO_SMALL=(--config demo --out "$DDP" device="$DEVICE" dataset.synthetic.num_images=64 cls.epochs=1
            "cam.splits=[val]")
"$PY" -c "import sys; sys.argv=['x']; from wsss_fast.config import load_config; from wsss_fast.cli.pipeline import prepare_demo_data; from pathlib import Path; prepare_demo_data(load_config('demo', ['dataset.synthetic.num_images=64']), Path('$DDP'))" > "$OUT/ddp.log" 2>&1
ddp_rc=0
for step in train-cls make-cam; do
  NCCL_DEBUG=INFO timeout "$(budget 90)" "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m wsss_fast.cli.main "$step" \
    "${DEMO_SMALL[@]}" dataset.root="$DDP/data" >> "$OUT/ddp.log" 2>&1 || { ddp_rc=$?; echo "torchrun $step rc=$ddp_rc"; }
done
# one process under torchrun still joins a process group: train-cls's log names its backend
"$PY" - "$DDP/cls/train.log" "$DEVICE" <<'EOF' || ddp_rc=1
import json, sys
start = [r for r in map(json.loads, open(sys.argv[1])) if r.get("event") == "start"][-1]
print(f"train-cls under torchrun: DistributedDataParallel over {start['processes']} process(es), "
      f"backend {start['ddp']}, {start['device']}")
sys.exit(0 if start["ddp"] == ("gloo" if sys.argv[2] == "cpu" else "nccl") else 1)
EOF
echo "NCCL INFO lines in ddp.log: $(grep -c 'NCCL INFO' "$OUT/ddp.log")"
[ -f "$DDP/cls/.done" ] && [ -f "$DDP/cam/.done" ] && echo "torchrun train-cls + make-cam: done" \
  || { ddp_rc=1; echo "torchrun outputs missing"; tail -30 "$OUT/ddp.log"; }
fi

if has demo; then
stamp "demo on the GPU (AMP)"
rm -rf "$WORK/demo"
t0=$(date +%s)
timeout "$(budget "${DEMO_TIMEOUT:-150}")" "${WSSS[@]}" demo --device "$DEVICE" --out "$WORK/demo" ${DEMO_ARGS:-} > "$OUT/demo.log" 2>&1
demo_rc=$?; demo_s=$(( $(date +%s) - t0 ))
echo "demo rc=$demo_rc in ${demo_s}s"; tail -12 "$OUT/demo.log"
cp "$WORK/demo/report.json" "$OUT/demo_report.json" 2>/dev/null
"$PY" - "$OUT/demo_report.json" "${DEMO_REFS:-$DEMO_REFS_DEFAULT}" "${DEMO_SIGMAS:-2}" \
  "$demo_s" <<'EOF' || demo_rc=1
import json, sys
import numpy as np
# the CPU sweeps of docs/demo.md (`wsss-fast demo --seeds 5`, training seeds 0-4, each on its own
# machine): a GPU run differs from the first epoch on, like another seed on another machine, so
# each mIoU-pos row must lie within the pooled runs' mean +- DEMO_SIGMAS sample std
r = json.load(open(sys.argv[1]))
cpus = [json.load(open(f))["splits"] for f in sys.argv[2].split(",")]
k, secs = float(sys.argv[3]), int(sys.argv[4])
bad = []
for split in ("val", "test"):
    for step in ("cam", "irnet", "seg"):
        got = 100 * r["splits"][split][step]["miou_pos"]
        v = 100 * np.array([x for c in cpus for x in c[split][step]["miou_pos"]["values"]])
        mean, std = v.mean(), v.std(ddof=1)
        ok = abs(got - mean) <= k * std
        print(f"demo {split} {step}: GPU {got:.2f}, CPU {mean:.2f} +- {std:.2f} ({len(v)} runs, "
              f"{len(cpus)} machines) {'ok' if ok else 'OUTSIDE'}")
        bad += [] if ok else [f"{split}/{step}"]
gain = {s: 100 * (r["splits"][s]["irnet"]["miou_pos"] - r["splits"][s]["cam"]["miou_pos"]) for s in ("val", "test")}
print(f"demo IRNet - CAM (mIoU pos): val {gain['val']:+.2f}, test {gain['test']:+.2f}")
print(f"demo wall {secs}s (goal < 120 s); rows beyond {k:g} std: {bad or 'none'}")
sys.exit(1 if bad else 0)
EOF
fi

if has profile; then
stamp "pipeline profile (GPU preset)"
timeout "$(budget "${PROFILE_TIMEOUT:-240}")" "$PY" benchmarks/pipeline_profile.py --preset gpu --device "$DEVICE" $([ "${PROFILE_REFERENCE:-1}" = 1 ] && echo --reference) \
  --out "$WORK/profile" --json "$OUT/pipeline_profile.json" \
  ${PROFILE_IMAGES:+--images $PROFILE_IMAGES} ${PROFILE_ITERS:+--max-iters $PROFILE_ITERS} --trace "${PROFILE_TRACE:-2}" \
  ${PROFILE_ARGS:-} > "$OUT/profile.log" 2>&1
prof_rc=$?
grep -E "^\[profile\]|^\||^goal|^  [a-z-]+ [0-9]+%:|^DICOM|^machine|^[0-9]+ images|Error|error" "$OUT/profile.log" | grep -v "it/s" | tail -60
fi

stamp "summary"
echo "ddp rc=$ddp_rc demo rc=$demo_rc profile rc=$prof_rc total $(elapsed)s"
exit $(( ddp_rc != 0 || demo_rc != 0 || prof_rc != 0 ))
