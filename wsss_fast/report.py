"""The evaluation report: every step of the pipeline on val and test (``wsss-fast evaluate``).

Reproduces the layout of Table 3 and Figure 1 of Viniavskyi, Dobko, Dobosevych,
"Weakly-Supervised Segmentation for Disease Localization in Chest X-Ray Images",
AIME 2020: mIoU over all images and over positive images only, and the per-image Dice
of the SIIM-ACR competition, for

- ``cam``: the Grad-CAM++ maps (``cam/<id>.npy``, ``high_res``) turned into label maps
  with a background threshold: the fg class with the highest score wins where it
  exceeds the threshold. The threshold is ``evaluate.cam_bg_thres`` when set, else the
  best threshold on val of ``wsss-fast eval-cam`` (``cam/eval.json``, run on demand),
  used for val and test alike, else ``cam.bg_thres``. The report records which. The IR
  labels, the walk and the segmentation threshold are chosen on val as well when the config
  says ``val`` (the default); ``thresholds`` lists every value and its source. The val rows
  are therefore optimistic; test is the held-out figure.
- ``irnet``: the random-walk pseudo labels (``sem_seg/<id>.png``; 255 counts as background);
- ``seg``: the segmentation predictions (``seg_pred/<id>.png``).

The ``cam`` and ``irnet`` rows are pseudo-label quality. With ``cam.use_labels`` (the
default, IRNet's protocol) their maps are made for each image's ground-truth classes, so an
image without a positive class is all background by construction; ``seg`` predicts without
labels. "mIoU pos" compares the three steps like for like; for label-free CAM and IRNet rows,
run ``make-cam`` with ``cam.use_labels=false`` (classes above ``cam.pred_threshold``). The
report records which (``cam_classes``).

Everything is compared at the original mask resolution (maps resized bilinearly,
label maps with nearest). A step whose outputs are missing for a split is left out of
that split (and listed under ``missing``). Writes ``report.json`` and Figure-1-style
panels (image | CAM | IRNet | segmentation | ground truth) into ``figures/``. The report
names the machine and packages it was computed with (``environment``): the same code and
seed give other figures on another CPU (its vector instructions), GPU or package version.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .cam.make import cam_threshold
from .config import get
from .data.base import as_is
from .engine.dist import resolve_device
from .engine.paths import RunPaths
from .engine.files import atomic_write_bytes, load_cam_file, read_json, read_png
from .metrics.segmentation import SegEvaluator, image_counts

STEPS = ("cam", "irnet", "seg")
STEP_TITLES = {"cam": "CAM (Grad-CAM++)", "irnet": "IRNet", "seg": "Segmentation"}


def cam_to_label(cam: dict, bg_thres: float, size: tuple[int, int]) -> np.ndarray:
    """Label map from one image's CAM file.

    Args:
        cam: dict with ``keys`` int [K] (0-based fg classes) and ``high_res`` [K, H, W] in [0, 1].
        bg_thres: background score; a pixel is background unless some map exceeds it.
        size: (H0, W0) output size; maps are resized bilinearly.

    Returns:
        uint8 [H0, W0]: 0 = background, keys[k] + 1 where map k wins.
    """
    keys = np.asarray(cam.get("keys", []), dtype=np.int64).reshape(-1)
    hr = cam.get("high_res")
    if keys.size == 0 or hr is None or np.asarray(hr).size == 0:
        return np.zeros(size, np.uint8)
    maps = torch.from_numpy(np.asarray(hr, dtype=np.float32))[None]
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    maps = maps[0]
    scores = torch.cat([torch.full_like(maps[:1], float(bg_thres)), maps], 0)
    lut = np.concatenate([[0], keys + 1]).astype(np.uint8)
    return lut[scores.argmax(0).numpy()]


def read_label(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A PNG label map resized (nearest) to ``size``; 255 (ignore) becomes background."""
    lab = read_png(path)
    if lab.shape != tuple(size):
        lab = np.array(PILImage.fromarray(lab).resize((size[1], size[0]), PILImage.NEAREST))
    lab = lab.copy()
    lab[lab == 255] = 0
    return lab


def _step_label(step: str, paths: RunPaths, name: str, size, cam_thres: float) -> np.ndarray | None:
    if step == "cam":
        f = paths.cam / f"{name}.npy"
        return cam_to_label(load_cam_file(f), cam_thres, size) if f.exists() else None
    f = (paths.sem_seg if step == "irnet" else paths.seg_pred) / f"{name}.png"
    return read_label(f, size) if f.exists() else None


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


class _ImageCounts(Dataset):
    """Per image of ``base``: None without ground truth, else ``{step: (confusion matrix, Dice)
    of its outputs (:func:`image_counts`), or None where they are missing}``. Computed in
    loader workers: reading, resizing and counting at full size is the work here."""

    def __init__(self, base, paths: RunPaths, cam_thres: float, num_classes: int) -> None:
        self.base, self.paths, self.cam_thres, self.num_classes = base, paths, cam_thres, num_classes

    def __len__(self) -> int:
        return len(self.base.image_ids)

    def __getitem__(self, i: int) -> dict | None:
        gt = self.base.load_mask(i)
        if gt is None:
            return None
        gt, name, out = np.asarray(gt), str(self.base.image_ids[i]), {}
        for step in STEPS:
            pred = _step_label(step, self.paths, name, gt.shape, self.cam_thres)  # None: no such file
            out[step] = None if pred is None else image_counts(pred, gt, self.num_classes)
        return out


def evaluate_split(cfg: dict, paths: RunPaths, base, cam_thres: float,
                   split: str = "") -> tuple[dict, dict]:
    """Metrics of every available step on one dataset split, the images counted in
    ``num_workers`` loader processes (in order: the same figures for any number).

    Returns:
        ``({step: {"miou_all", "miou_pos", "dice", "n_images", "n_pos", "iou_all", "iou_pos"}},
        {step: number of images without outputs})``: a step is reported only when its
        outputs exist for every image with ground truth.
    """
    n_cls = int(getattr(base, "num_classes", get(cfg, "dataset.num_classes"))) + 1
    names = ["background"] + list(getattr(base, "class_names", []) or [str(c) for c in range(n_cls - 1)])
    evals = {s: SegEvaluator(n_cls, class_names=names[:n_cls]) for s in STEPS}
    missing = {s: 0 for s in STEPS}
    labels = np.asarray(base.labels)
    loader = DataLoader(_ImageCounts(base, paths, cam_thres, n_cls), batch_size=None, collate_fn=as_is,
                        num_workers=int(get(cfg, "num_workers")))
    for i, counts in enumerate(tqdm(loader, desc=f"evaluate {split}", leave=False)):
        if counts is None:
            continue
        positive = bool(labels[i].max() > 0) if labels.size else None
        for step, c in counts.items():
            if c is None:
                missing[step] += 1
            elif not missing[step]:  # a step that lacks outputs is left out: counted, not evaluated
                evals[step].add_counts(*c, positive=positive)
    out: dict = {}
    for step in STEPS:
        if not missing[step] and evals[step].n_images:
            r = evals[step].result()
            out[step] = _clean({k: r[k] for k in ("miou_all", "miou_pos", "dice", "n_images", "n_pos",
                                                  "iou_all", "iou_pos")})
    return out, {s: n for s, n in missing.items() if n}


def format_table(report: dict) -> str:
    """The Table-3-style text table of a report dict."""
    lines = [f"{'split':<6} {'step':<18} {'mIoU all':>9} {'mIoU pos':>9} {'Dice':>7} {'images':>7}",
             "-" * 61]

    def f(v):
        return f"{100 * v:9.2f}" if isinstance(v, (int, float)) else f"{'-':>9}"

    for split, steps in report.get("splits", {}).items():
        for step in STEPS:
            r = steps.get(step)
            if r is None:
                lines.append(f"{split:<6} {STEP_TITLES[step]:<18} {'(not available)':>27}")
                continue
            dice = f"{100 * r['dice']:7.2f}" if isinstance(r.get("dice"), (int, float)) else f"{'-':>7}"
            lines.append(f"{split:<6} {STEP_TITLES[step]:<18} {f(r.get('miou_all'))} {f(r.get('miou_pos'))} "
                         f"{dice} {r.get('n_images', 0):>7}")
    th = report.get("thresholds") or {}
    if th:
        lines.append("")
        lines.append("thresholds: " + ", ".join(
            f"{k} {str(v['value']).lower()}" if isinstance(v.get("value"), bool) else f"{k} {v['value']:g}"
            for k, v in th.items() if isinstance(v.get("value"), (int, float))))
    t = report.get("timings_s") or {}
    if t:
        lines.append("")
        lines.append("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()
                                                   if isinstance(v, (int, float))))
    return "\n".join(lines)


def read_timings(paths: RunPaths) -> dict:
    return read_json(paths.root / "timings.json") or {}


def write_report(report: dict, paths: RunPaths) -> None:
    atomic_write_bytes((json.dumps(report, indent=2) + "\n").encode(), paths.report)


def run_thresholds(cfg: dict, paths: RunPaths, cam_thres: tuple[float, str]) -> dict:
    """Every threshold the run used, with where it came from (``report.json["thresholds"]``).

    Values chosen on val inside the run are read from the files the steps wrote
    (``ir_label/thresholds.json``, ``sem_seg/tune.json``, ``seg_pred/threshold.json``);
    configured numbers are reported as such. A ``val`` setting whose step has not run is
    left out.
    """
    out = {"cam.bg_thres": {"value": cam_thres[0], "source": cam_thres[1]}}
    ir = read_json(paths.ir_label / "thresholds.json") or {}
    for k in ("conf_fg_thres", "conf_bg_thres"):
        if k in ir:
            out[f"ir_label.{k}"] = {"value": ir[k]["value"], "source": ir[k]["source"]}
    walk = read_json(paths.sem_seg / "tune.json")
    for k in ("steps", "bg_thres", "edge_mask"):
        if get(cfg, f"sem_seg.{k}") != "val":
            out[f"sem_seg.{k}"] = {"value": get(cfg, f"sem_seg.{k}"), "source": f"sem_seg.{k}"}
        elif walk is not None and k in walk:
            out[f"sem_seg.{k}"] = {"value": walk[k], "source": walk["source"]}
    seg = read_json(paths.seg_pred / "threshold.json")
    if get(cfg, "seg.threshold") != "val":
        out["seg.threshold"] = {"value": float(get(cfg, "seg.threshold")), "source": "seg.threshold"}
    elif seg is not None:
        out["seg.threshold"] = {"value": seg["threshold"], "source": seg["source"]}
    return out


def cam_classes(cfg: dict) -> str:
    """Which classes the CAM (and so IRNet) maps were made for, as the report states it."""
    if bool(get(cfg, "cam.use_labels")):
        return "ground-truth image labels (cam.use_labels)"
    return f"predicted classes (sigmoid > cam.pred_threshold = {float(get(cfg, 'cam.pred_threshold')):g})"


ENV_PACKAGES = ("torch", "torchvision", "numpy", "pillow", "scipy", "segmentation-models-pytorch", "timm",
                "pydicom", "opencv-python-headless")


def environment(device: str | torch.device | None = None) -> dict:
    """What a run's figures depend on besides code, config and seed: the Python and package
    versions, the CPU and the vector instructions torch's kernels use there, and the GPU."""
    import platform
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for name in ENV_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    env = {"python": platform.python_version(), "packages": versions, "cpu": cpu, "cpu_count": os.cpu_count(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(dev)
    return env


def evaluate(cfg: dict, paths: RunPaths) -> dict:
    """Evaluate CAM, IRNet and segmentation on ``evaluate.splits``; write report and figures.

    Returns:
        The report dict, also written to ``paths.report``::

            {"splits": {"val": {"cam": {"miou_all", "miou_pos", "dice", ...}, "irnet": {...},
                                "seg": {...}}, "test": {...}},
             "cam_bg_thres": float, "cam_bg_thres_source": str, "cam_classes": str,
             "thresholds": {"cam.bg_thres": {"value", "source"}, "ir_label.conf_fg_thres": ...,
                            "sem_seg.steps": ..., "sem_seg.bg_thres": ..., "seg.threshold": ...},
             "timings_s": {...}, "environment": :func:`environment`,
             "missing": {split: {step: images without outputs}}}   (only when some are)
    """
    from .data import build_dataset

    from .metrics.figures import write_figures

    thres, source = cam_threshold(cfg, paths)
    report: dict = {"splits": {}, "cam_bg_thres": thres, "cam_bg_thres_source": source,
                    "cam_classes": cam_classes(cfg), "thresholds": run_thresholds(cfg, paths, (thres, source))}
    datasets = {}
    for split in get(cfg, "evaluate.splits"):
        base = build_dataset(cfg, split, paths, train=False)
        datasets[split] = base
        report["splits"][split], missing = evaluate_split(cfg, paths, base, thres, split)
        if missing:
            report.setdefault("missing", {})[split] = missing
    report["timings_s"] = read_timings(paths)
    report["environment"] = environment(resolve_device(cfg))
    write_report(report, paths)
    n_fig = int(get(cfg, "evaluate.num_figures"))
    fig_split = "test" if "test" in datasets else (next(iter(datasets)) if datasets else None)
    if n_fig > 0 and fig_split is not None:
        write_figures(datasets[fig_split], paths, n_fig, fig_split)
    print(format_table(report))
    print(f"report: {paths.report}  (CAM threshold {thres:g} from {source}; CAM and IRNet maps of the "
          f"{report['cam_classes']})")
    paths.mark_done(paths.figures)
    return report


# ---------------------------------------------------------------------------------------------
# several runs: mean, spread and paired gains


METRIC_KEYS = ("miou_all", "miou_pos", "dice")
GAINS = (("irnet", "cam"), ("seg", "irnet"), ("seg", "cam"))


def _stats(values: list[float]) -> dict:
    v = np.asarray([x for x in values if isinstance(x, (int, float))], dtype=np.float64)
    std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return _clean({"mean": float(v.mean()) if v.size else float("nan"), "std": std, "values": [float(x) for x in v]})


def summarize_runs(reports: dict[str, dict]) -> dict:
    """Mean, standard deviation and paired gains of several runs' reports.

    Args:
        reports: run name (e.g. ``"seed 3"``) -> its ``report.json`` dict.

    Returns:
        ``{"runs": [names], "splits": {split: {step: {metric: {"mean", "std", "values"}}}},
        "gains": {split: {"irnet-cam": {metric: {"mean", "std", "values", "positive", "n"}}, ...}},
        "thresholds": {name: the run's thresholds}, "environments": {name: its machine and
        packages}}``. Gains are paired: the later step minus
        the earlier one within each run; ``positive`` counts the runs where it is > 0. The
        std is the sample standard deviation (ddof 1).
    """
    names = list(reports)
    out: dict = {"runs": names, "splits": {}, "gains": {},
                 "thresholds": {n: reports[n].get("thresholds", {}) for n in names},
                 "environments": {n: reports[n].get("environment") for n in names}}
    splits = [s for s in (reports[names[0]].get("splits", {}) if names else {})]
    for split in splits:
        rows = {n: reports[n].get("splits", {}).get(split, {}) for n in names}
        out["splits"][split] = {step: {m: _stats([rows[n].get(step, {}).get(m) for n in names]) for m in METRIC_KEYS}
                                for step in STEPS if all(step in rows[n] for n in names)}
        gains = {}
        for late, early in GAINS:
            if not all(late in rows[n] and early in rows[n] for n in names):
                continue
            g = {}
            for m in METRIC_KEYS:
                d = [rows[n][late][m] - rows[n][early][m] for n in names
                     if isinstance(rows[n][late].get(m), (int, float)) and isinstance(rows[n][early].get(m), (int, float))]
                g[m] = {**_stats(d), "positive": int(sum(x > 0 for x in d)), "n": len(d)}
            gains[f"{late}-{early}"] = g
        out["gains"][split] = gains
    return out


def format_summary(summary: dict) -> str:
    """Markdown tables of :func:`summarize_runs`: mean +- std (x100) per split and step, then
    the paired gains with how many runs they were positive in."""
    def ms(d: dict) -> str:
        if d.get("mean") is None:
            return "-"
        return f"{100 * d['mean']:.2f} ± {100 * d['std']:.2f}" if d.get("std") is not None else f"{100 * d['mean']:.2f}"

    n = len(summary.get("runs", []))
    lines = [f"{n} runs: " + ", ".join(summary.get("runs", [])), "",
             "| split | step | mIoU all | mIoU pos | Dice |", "|---|---|---|---|---|"]
    for split, steps in summary.get("splits", {}).items():
        for step, r in steps.items():
            lines.append(f"| {split} | {STEP_TITLES[step]} | " + " | ".join(ms(r[m]) for m in METRIC_KEYS) + " |")
    lines += ["", "Paired gains (later step minus earlier, within each run; runs where > 0):", "",
              "| split | gain | mIoU all | mIoU pos | Dice |", "|---|---|---|---|---|"]
    for split, gains in summary.get("gains", {}).items():
        for name, g in gains.items():
            late, early = name.split("-")
            cells = [f"{ms(g[m])} ({g[m]['positive']}/{g[m]['n']})" for m in METRIC_KEYS]
            lines.append(f"| {split} | {STEP_TITLES[late]} − {STEP_TITLES[early]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
