"""Profile of the whole pipeline at the paper's scale, and a projection of the full SIIM run.

Writes a synthetic set in the SIIM competition layout (DICOMs of ``--dicom-size`` px, SIIM's
share of positive images), runs
every step of ``wsss-fast run`` with ``configs/siim.yaml`` (ResNet50 OS8 + DropBlock,
Grad-CAM++ at 4 scales + flip, CRF IR labels, IRNet ResNet50, a 256-step walk, U-Net
SEResNeXt50 with AMP at batch 48, flip TTA; random initialization), one epoch per training
step bounded to ``--max-iters`` iterations, and reports per step:

* images/s in the step's steady state (its loops after their first batch),
* peak GPU memory (``torch.cuda.max_memory_allocated``), GPU busy fraction (``nvidia-smi``
  utilization sampled every 100 ms), process CPU use,
* what bounds it: the share of the loop spent waiting for the next batch (data loading), or
  compute (GPU busy, or the host between kernels when the GPU idles without a data wait);
* with ``--trace K``, a ``torch.profiler`` window of K batches per step: the GPU kernels' share
  of it and the main thread's top ops (what the host does while the GPU idles);

then projects the wall time of the full SIIM run (12,047 images, 10,675 train, the paper's
epochs) from those rates, and with ``--reference`` times what the reference code does per
image for the replaced parts (IRNet's dense random walk, its pydensecrf IR labels,
pytorch-grad-cam's Grad-CAM++) and projects them beside ours.

How the training steps are bounded: the profile replaces ``DataLoader`` in the step modules by
:class:`ProbedLoader`, which times every batch and stops a training loader (a shuffled or
batch-sampled one) after ``--max-iters`` batches; evaluation loaders run to the end. No step
code changes. Every step runs in this process (``sem_seg.processes=1``), so the GPU memory
figures are complete; ``ir_label.workers`` CRF processes (CPU backend) are not counted there.

    python benchmarks/pipeline_profile.py --preset gpu --out /tmp/prof     # 256 images, 1024 px -> 512
    python benchmarks/pipeline_profile.py --preset cpu --out /tmp/prof     # 16 images, 512 px -> 256
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, Path(__file__).resolve().parent):  # the package; this folder's profile_probes, pipeline_reference
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from wsss_fast.config import get, load_config  # noqa: E402
from wsss_fast.data import build_dataset, write_synthetic_siim  # noqa: E402
from wsss_fast.engine.dist import resolve_device  # noqa: E402
from wsss_fast.engine.files import save_config  # noqa: E402
from wsss_fast.irn import train as irn_train  # noqa: E402
from wsss_fast.engine.paths import RunPaths  # noqa: E402
from wsss_fast.steps import PIPELINE  # noqa: E402
from profile_probes import (GpuSampler, ProbedLoader, _cpu_seconds, decode_benchmark,  # noqa: E402,F401
                            machine_info, trace_line)
from profile_report import format_table, goals  # noqa: E402,F401

PRESETS = {  # images, DICOM px, working px, max training iterations
    "gpu": dict(images=256, dicom_size=1024, image_size=512, max_iters=20),
    "cpu": dict(images=16, dicom_size=512, image_size=256, max_iters=2),
    "tiny": dict(images=12, dicom_size=64, image_size=64, max_iters=1, workers=0),
}
# what a preset must change besides sizes (IRNet's radius 10 needs a stride-4 crop wider than 18 cells)
PRESET_SET = {"tiny": ["irn.radius=5", "cls.arch=resnet18", "irn.backbone=resnet18", "seg.encoder=resnet18",
                       "cam.scales=[1.0]"]}
# The walk the paper runs (IRNet's constants), not one chosen on val: a randomly initialized IRNet
# would choose any number of steps, and the time of make-sem-seg is that of the walk's length.
# Choosing on val adds one walk per val image and candidate of sem_seg.val_steps (docs/pipeline_profile.md).
PAPER_WALK = ["sem_seg.steps=256", "sem_seg.bg_thres=0.25", "sem_seg.edge_mask=true"]
# The full SIIM-ACR set and the paper's split (Viniavskyi et al., AIME 2020)
SIIM_IMAGES, SIIM_TRAIN, SIIM_VAL = 12047, 10675, 686
# its share of positive images (2,669 of 12,047): make-cam, make-ir-label and make-sem-seg run the
# network and the CRF on those only, so the synthetic set has the same share
SIIM_POSITIVE = 2669 / SIIM_IMAGES
SIIM_EVAL = 2 * SIIM_VAL  # val + test
LOADER_MODULES = ("wsss_fast.cls.train", "wsss_fast.cam.make", "wsss_fast.irn.ir_label", "wsss_fast.irn.train",
                  "wsss_fast.irn.sem_seg",
                  "wsss_fast.seg.train", "wsss_fast.seg.infer")


# ----------------------------------------------------------------------------- the run
def write_data(root: Path, n: int, size: int, workers: int) -> None:
    """The synthetic set in the SIIM layout, written by ``workers`` processes (parts with seeds
    0..workers-1, whose image ids differ, merged into one ``dicom-images-train/`` and CSV)."""
    if (root / "train-rle.csv").exists():
        return
    workers = max(1, min(workers, n))
    counts = [n // workers + (k < n % workers) for k in range(workers)]
    n_pos = round(n * SIIM_POSITIVE)
    pos = [n_pos // workers + (k < n_pos % workers) for k in range(workers)]  # <= counts[k]: n_pos <= n
    parts = [(root.parent / f"{root.name}_part{k}", c, size, k, p / c) for k, (c, p) in enumerate(zip(counts, pos))]
    write = functools.partial(write_synthetic_siim, progress=False)  # picklable for the spawned pool
    if workers == 1:
        write(*parts[0])
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            pool.starmap(write, parts)
    (root / "dicom-images-train").mkdir(parents=True, exist_ok=True)
    rows = ["ImageId, EncodedPixels"]
    for part, *_ in parts:
        for study in (part / "dicom-images-train").iterdir():
            study.rename(root / "dicom-images-train" / study.name)
        rows += (part / "train-rle.csv").read_text().splitlines()[1:]
        shutil.rmtree(part)
    (root / "train-rle.csv").write_text("\n".join(rows) + "\n")



def positive_images(root: Path) -> int:
    """How many images of the synthetic set have a lesion (an RLE other than ``-1`` in the CSV)."""
    rows = (line.split(",", 1) for line in (root / "train-rle.csv").read_text().splitlines()[1:])
    return len({r[0].strip() for r in rows if len(r) == 2 and r[1].strip() != "-1"})


def _loader_parts(stats: list[dict | None]) -> dict[str, dict]:
    """The probed loaders' steady state, summed per kind (``train`` / ``eval``).

    A loader with several batches counts its batches after the first (worker start-up and
    warm-up fall into the step's set-up). Where every loader of a kind had one batch (a small
    val or test split), there is no steady state: its batch counts without the time it waited
    for it (the workers' start-up), and the part says ``single_batch``.
    """
    kinds: dict[str, list[dict]] = {}
    for st in stats:
        if st is not None:
            kinds.setdefault("train" if st["training"] else "eval", []).append(st)
    parts = {}
    for kind, sts in kinds.items():
        steady = [st for st in sts if st["batches"] > 1]
        p = {"images": 0, "seconds": 0.0, "wait_s": 0.0, "batches": 0, "windows": []}
        for st in steady or sts:
            p["images"] += st["images"]
            p["batches"] += st["batches"]
            p["windows"].append(st["window"])
            if steady:
                p["seconds"] += st["seconds"]
                p["wait_s"] += st["wait_s"]
            else:
                p["seconds"] += max(st["seconds"] - st["wait_s"], 1e-9)
        if not steady:
            p["single_batch"] = True
        parts[kind] = p
    return parts

def profile_config(args: argparse.Namespace, out: Path, n_train: int) -> dict:
    """``configs/siim.yaml`` on the synthetic set, one bounded epoch per training step."""
    def fit(key: str, cfg: dict) -> int:  # at least two batches per epoch: one to warm up, one measured
        return max(2, min(int(get(cfg, key)), n_train // 2))

    base = load_config("siim", [f"dataset.root={out / 'data'}", f"dataset.image_size={args.image_size}",
                                f"device={args.device}", *PRESET_SET.get(args.preset, []), *args.set])
    over = [f"dataset.root={out / 'data'}", f"dataset.image_size={args.image_size}", f"device={args.device}",
            *PAPER_WALK,
            f"dataset.cache={'auto' if args.cache else 'null'}", "dataset.image_format=dicom",
            "cls.epochs=1", "irn.epochs=1", "seg.epochs=1", "sem_seg.processes=1", "seg.image_size=null",
            f"cls.batch_size={fit('cls.batch_size', base)}", f"irn.batch_size={fit('irn.batch_size', base)}",
            f"seg.batch_size={fit('seg.batch_size', base)}", f"irn.crop_size={min(int(get(base, 'irn.crop_size')), args.image_size)}"]
    if args.workers is not None and args.workers >= 0:
        over += [f"num_workers={args.workers}", f"ir_label.workers={args.workers}"]
    return load_config("siim", over + PRESET_SET.get(args.preset, []) + list(args.set))


def full_run_images(paper: dict) -> dict[str, dict[str, float]]:
    """Images each part of each step handles in the full SIIM run (paper's epochs and batches)."""
    def epoch(bs: int) -> int:
        return (SIIM_TRAIN // bs) * bs

    return {
        "train-cls": {"train": paper["cls.epochs"] * epoch(paper["cls.batch_size"]), "eval": paper["cls.epochs"] * 686},
        "make-cam": {"eval": SIIM_IMAGES},
        "make-ir-label": {"eval": SIIM_TRAIN, "step": SIIM_TRAIN, "val_choice": SIIM_VAL},
        "train-irn": {"train": paper["irn.epochs"] * epoch(paper["irn.batch_size"]), "dp_mean": SIIM_TRAIN},
        "make-sem-seg": {"eval": SIIM_IMAGES},
        "train-seg": {"train": paper["seg.epochs"] * epoch(paper["seg.batch_size"])},
        "predict-seg": {"eval": SIIM_EVAL},
        "evaluate": {"eval": SIIM_EVAL, "step": SIIM_EVAL},
    }


def _bound(wait_frac: float | None, busy: float | None, device: str) -> str:
    if wait_frac is not None and wait_frac > 0.3:
        return f"data loading ({wait_frac:.0%} of the loop waits for batches)"
    if device.startswith("cuda"):
        if busy is not None and busy < 0.7:
            return "host (GPU idle between kernels" + (f", data wait {wait_frac:.0%})" if wait_frac is not None else ")")
        return "GPU compute"
    return "compute" + (f" (data wait {wait_frac:.0%})" if wait_frac is not None else "")


def run_profile(args: argparse.Namespace) -> dict:
    """Write the data, run every step with the probes, project the full run (see the module docstring)."""
    out = Path(args.out)
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_data(out / "data", args.images, args.dicom_size, args.data_workers)
    data_s = time.perf_counter() - t0
    paper = {k: int(get(load_config("siim"), k)) for k in
             ("cls.epochs", "cls.batch_size", "irn.epochs", "irn.batch_size", "seg.epochs", "seg.batch_size")}
    paths = RunPaths(out / "run")
    paths.root.mkdir(parents=True, exist_ok=True)
    loose = profile_config(args, out, 10**9)
    n_train = len(build_dataset(loose, get(loose, "cls.train_split"), paths, train=False))
    cfg = profile_config(args, out, n_train)
    device = str(resolve_device(cfg))
    save_config(cfg, paths.config)

    ProbedLoader.max_iters, ProbedLoader.trace_batches = args.max_iters, args.trace
    saved = {}
    for name in LOADER_MODULES:
        mod = importlib.import_module(name)
        saved[name] = mod.DataLoader
        mod.DataLoader = ProbedLoader
    dp_timer: dict[str, float] = {}
    real_dp = irn_train.estimate_displacement_mean

    def timed_dp(model, dataset, dev, max_images=None, *args):
        t, loaders = time.perf_counter(), len(ProbedLoader.registry)
        r = real_dp(model, dataset, dev, max_images, *args)
        del ProbedLoader.registry[loaders:]  # its loader is timed here, whole, not as a part of its own
        dp_timer.update(seconds=time.perf_counter() - t,
                        images=len(dataset) if max_images is None else min(len(dataset), int(max_images)))
        return r

    irn_train.estimate_displacement_mean = timed_dp
    # make-ir-label's thresholds chosen on val: timed apart, projected to SIIM's val images
    import wsss_fast.irn.ir_label as ir_label_mod

    val_timer: dict[str, float] = {}
    real_thr = ir_label_mod.ir_thresholds

    def timed_thr(cfg_: dict, paths_: RunPaths) -> dict:
        t, loaders = time.perf_counter(), len(ProbedLoader.registry)
        r = real_thr(cfg_, paths_)
        del ProbedLoader.registry[loaders:]  # the val choice's loaders: timed here, whole
        val_timer.update(seconds=time.perf_counter() - t, images=len(build_dataset(cfg_, "val", paths_, train=False)))
        return r

    ir_label_mod.ir_thresholds = timed_thr
    # evaluate has no loader: its per-image loop (evaluate_split) is timed, the rest is set-up
    import wsss_fast.report as report_mod

    eval_timer: dict[str, float] = {}
    real_eval = report_mod.evaluate_split

    def timed_eval(cfg_, paths_, base, *a, **k):
        t = time.perf_counter()
        r = real_eval(cfg_, paths_, base, *a, **k)
        eval_timer["seconds"] = eval_timer.get("seconds", 0.0) + time.perf_counter() - t
        eval_timer["images"] = eval_timer.get("images", 0) + len(base.image_ids)
        return r

    report_mod.evaluate_split = timed_eval
    gpu = GpuSampler(torch.device(device).index or 0) if device.startswith("cuda") else None
    cuda = device.startswith("cuda")
    steps = []
    try:
        for step in PIPELINE:
            ProbedLoader.registry = []
            dp_timer.clear()
            val_timer.clear()
            eval_timer.clear()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            c0, s0 = _cpu_seconds(), time.perf_counter()
            step.resolve()(cfg, paths)
            if cuda:
                torch.cuda.synchronize()
            s1 = time.perf_counter()
            if not paths.is_done(step.folder(paths)):
                paths.mark_done(step.folder(paths))
            rec: dict[str, Any] = {"step": step.name, "wall_s": s1 - s0,
                                   "cpu_util": (_cpu_seconds() - c0) / max(s1 - s0, 1e-9) / (os.cpu_count() or 1)}
            parts = _loader_parts([ld.stats() for ld in ProbedLoader.registry])
            if dp_timer:
                parts["dp_mean"] = {"images": dp_timer["images"], "seconds": dp_timer["seconds"], "wait_s": None}
            if val_timer:
                parts["val_choice"] = {"images": val_timer["images"], "seconds": val_timer["seconds"], "wait_s": None}
            if eval_timer:
                parts["eval"] = {"images": eval_timer["images"], "seconds": eval_timer["seconds"], "wait_s": None}
            if not any(k in parts for k in ("train", "eval")):  # no loader probed: the rest of the step, whole
                n = _step_images(step.name, cfg, paths)
                rest = s1 - s0 - sum(p["seconds"] for p in parts.values())
                parts["step"] = {"images": n, "seconds": max(rest, 1e-9), "wait_s": None}
            for p in parts.values():
                p["images_per_s"] = p["images"] / max(p["seconds"], 1e-9)
            rec["parts"] = parts
            main = parts.get("train") or parts.get("eval") or parts.get("step")
            rec["images_per_s"] = main["images_per_s"]
            rec["data_wait"] = None if main.get("wait_s") is None else main["wait_s"] / max(main["seconds"], 1e-9)
            # busy over the whole step (set-up included) and over the measured loops alone
            rec["gpu_busy_step"] = gpu.busy([(s0, s1)]) if gpu else None
            rec["gpu_busy"] = gpu.busy(main.get("windows") or [(s0, s1)]) if gpu else None
            for p in parts.values():
                p.pop("windows", None)
            if cuda:
                rec["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
            rec["bound"] = _bound(rec["data_wait"], rec["gpu_busy"], device)
            rec["trace"] = next((ld.trace for ld in ProbedLoader.registry if ld.trace), None)
            steps.append(rec)
            print(f"[profile] {step.name}: {rec['wall_s']:.1f}s, {rec['images_per_s']:.2f} img/s, {rec['bound']}",
                  flush=True)
            if rec["trace"]:
                print(f"[profile] {step.name} traced: {trace_line(rec['trace'])}", flush=True)
            if args.json:  # the steps so far, should the run be stopped before the end
                _write_json(args.json, {"partial": True, "machine": machine_info(device), "preset": args.preset,
                                        "images": args.images, "steps": steps})
    finally:
        for name, dl in saved.items():
            importlib.import_module(name).DataLoader = dl
        irn_train.estimate_displacement_mean = real_dp
        ir_label_mod.ir_thresholds = real_thr
        report_mod.evaluate_split = real_eval
        if gpu:
            gpu.close()

    full = full_run_images(paper)
    total = 0.0
    for rec in steps:
        measured = sum(p["seconds"] for p in rec["parts"].values())
        fixed = max(0.0, rec["wall_s"] - measured)
        counts = full[rec["step"]]
        # "step": no loader was probed (or its only batch was the warm-up): the step's images at its rate
        proj = fixed + sum((counts.get(k) or (sum(counts.values()) if k == "step" else 0)) / max(p["images_per_s"], 1e-9)
                           for k, p in rec["parts"].items())
        rec["setup_s"], rec["projected_full_s"] = fixed, proj
        total += proj
    choice = walk_choice_timing(cfg, paths, device)
    total += choice["projected_full_s"]
    result = {"machine": machine_info(device), "preset": args.preset, "images": args.images,
              "dicom_size": args.dicom_size, "image_size": args.image_size, "max_iters": args.max_iters,
              "cache": args.cache, "synthetic_data_s": data_s, "positive_images": positive_images(out / "data"),
              "config_overrides": _diff(cfg),
              "paper": paper, "steps": steps, "walk_choice": choice, "projected_full_run_s": total,
              "gpu_busy_source": gpu.source if gpu else None,
              "decode": decode_benchmark(cfg, paths, min(args.images, 32))}
    result["goals"] = goals(result)
    if args.reference:
        from pipeline_reference import reference_timings

        result["reference"] = reference_timings(cfg, device, args.ref_images, args.ref_walk_size)
    return result


def walk_choice_timing(cfg: dict, paths: RunPaths, device: str) -> dict:
    """The walk's choice on val as siim.yaml makes it (``sem_seg.steps`` / ``bg_thres`` /
    ``edge_mask`` as there, by default ``val``): the profile's labels use the paper's walk
    (:data:`PAPER_WALK`), so the choice a default run adds is timed here, on the run's val
    images, and projected to SIIM's 686."""
    from wsss_fast.irn.sem_seg import tune_walk

    siim = get(load_config("siim"), "sem_seg")
    tcfg = {**cfg, "sem_seg": {**get(cfg, "sem_seg"), **{k: siim[k] for k in ("steps", "bg_thres", "edge_mask")}}}
    n = len(build_dataset(cfg, "val", paths, train=False))
    if "val" not in (siim["steps"], siim["bg_thres"], siim["edge_mask"]) or n == 0:
        return {"images": n, "seconds": 0.0, "per_image_s": 0.0, "projected_full_s": 0.0, "chosen": None}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    res = tune_walk(tcfg, paths, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    s = time.perf_counter() - t
    print(f"[profile] make-sem-seg, choosing the walk on val: {s:.1f}s for {n} images", flush=True)
    return {"images": n, "seconds": s, "per_image_s": s / n, "projected_full_s": s / n * SIIM_VAL,
            "chosen": {k: res[k] for k in ("steps", "bg_thres", "edge_mask")}}


def _step_images(name: str, cfg: dict, paths: RunPaths) -> int:
    splits = {"make-ir-label": get(cfg, "ir_label.splits"), "predict-seg": get(cfg, "evaluate.splits"),
              "evaluate": get(cfg, "evaluate.splits")}.get(name, [])
    return sum(len(build_dataset(cfg, s, paths, train=False)) for s in splits) or 1


def _diff(cfg: dict) -> dict:
    ref = load_config("siim")
    out = {}

    def walk(a, b, prefix=""):
        for k, v in a.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, b.get(k, {}), key + ".")
            elif b.get(k) != v:
                out[key] = v
    walk(cfg, ref)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--out", required=True, help="work folder (data and run; removed first unless --keep)")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--dicom-size", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--max-iters", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=-1, help="num_workers and ir_label.workers (default: siim.yaml's)")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="dataset.cache=null (decode every time)")
    p.add_argument("--reference", action="store_true", help="also time the reference code per image")
    p.add_argument("--ref-images", type=int, default=2)
    p.add_argument("--ref-walk-size", type=int, default=None,
                   help="time the dense walk on this map side and scale (default: the real map on CUDA, 32 on CPU)")
    p.add_argument("--data-workers", type=int, default=min(16, os.cpu_count() or 1),
                   help="processes writing the synthetic DICOMs")
    p.add_argument("--trace", type=int, default=0, metavar="K",
                   help="torch.profiler over K batches of each step's first loader (after its first batch)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("set", nargs="*", help="config overrides key=value (after the profile's own)")
    args = p.parse_args(argv)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None or (k == "workers" and args.workers < 0):
            setattr(args, k, v)
    if args.ref_walk_size is None and not (args.device.startswith("cuda") or
                                           (args.device == "auto" and torch.cuda.is_available())):
        args.ref_walk_size = 32
    r = run_profile(args)
    print(format_table(r))
    if args.json:
        _write_json(args.json, r)
    return 0


def _write_json(path: str, obj: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
