"""The evaluation report: every step of the pipeline on val and test (``wsss-fast evaluate``).

Reproduces the layout of Table 3 and Figure 1 of Viniavskyi, Dobko, Dobosevych,
"Weakly-Supervised Segmentation for Disease Localization in Chest X-Ray Images",
AIME 2020: mIoU over all images and over positive images only, and the per-image Dice
of the SIIM-ACR competition, for

- ``cam``: the Grad-CAM++ maps (``cam/<id>.npy``, ``high_res``) turned into label maps
  with a background threshold: the fg class with the highest score wins where it
  exceeds the threshold. The threshold is ``evaluate.cam_bg_thres`` when set, else the
  best threshold on val of ``wsss-fast eval-cam`` (``cam/eval.json``, run on demand),
  used for val and test alike, else ``cam.bg_thres``. The report records which. (IRNet
  and the segmentation model use their configured thresholds, not tuned on val; the
  CAM row on val is therefore slightly optimistic.)
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
panels (image | CAM | IRNet | segmentation | ground truth) into ``figures/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from tqdm.auto import tqdm

from .config import get
from .engine.paths import RunPaths
from .engine.files import atomic_write_bytes, load_cam_file, read_png
from .metrics.segmentation import SegEvaluator

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


def cam_threshold(cfg: dict, paths: RunPaths, run_sweep: bool = True) -> tuple[float, str]:
    """The CAM background threshold of the report and where it came from.

    ``evaluate.cam_bg_thres`` when it is a number. Otherwise the best threshold of
    ``wsss-fast eval-cam`` on val (``cam/eval.json``; the sweep is run here when the file
    is missing, CAM files of val exist and ``run_sweep``), so that test is evaluated with
    a threshold chosen on val only. Falls back to ``cam.bg_thres``.
    """
    forced = get(cfg, "evaluate.cam_bg_thres")
    if forced is not None:
        return float(forced), "evaluate.cam_bg_thres"
    f = paths.cam / "eval.json"
    if not f.exists() and run_sweep and paths.cam.is_dir() and any(paths.cam.glob("*.npy")):
        try:
            from .cam.make import eval_cam

            eval_cam({**cfg, "cam": {**get(cfg, "cam"), "eval_splits": ["val"]}}, paths)
        except (FileNotFoundError, ValueError, KeyError) as e:  # no val CAMs / masks: fall back
            print(f"evaluate: no CAM threshold sweep on val ({e}); using cam.bg_thres")
    if f.exists():
        try:
            data = json.loads(f.read_text())
            best = (data.get("splits", {}).get("val") or {}).get("best") or {}
            if isinstance(best.get("threshold"), (int, float)):
                return float(best["threshold"]), f"eval-cam best on val by {data.get('metric', '?')}"
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
    return float(get(cfg, "cam.bg_thres")), "cam.bg_thres"


def _exists(step: str, paths: RunPaths, name: str) -> bool:
    d = {"cam": (paths.cam, ".npy"), "irnet": (paths.sem_seg, ".png"), "seg": (paths.seg_pred, ".png")}[step]
    return (d[0] / f"{name}{d[1]}").exists()


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


def evaluate_split(cfg: dict, paths: RunPaths, base, cam_thres: float,
                   split: str = "") -> tuple[dict, dict]:
    """Metrics of every available step on one dataset split.

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
    for i, name in enumerate(tqdm(base.image_ids, desc=f"evaluate {split}", leave=False)):
        gt = base.load_mask(i)
        if gt is None:
            continue
        positive = bool(labels[i].max() > 0) if labels.size else None
        for step in STEPS:
            if missing[step]:  # a step that lacks outputs is left out: count, don't evaluate
                missing[step] += not _exists(step, paths, name)
                continue
            pred = _step_label(step, paths, name, gt.shape, cam_thres)
            if pred is None:
                missing[step] += 1
                continue
            evals[step].add(pred, gt, positive=positive)
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
    t = report.get("timings_s") or {}
    if t:
        lines.append("")
        lines.append("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()
                                                   if isinstance(v, (int, float))))
    return "\n".join(lines)


def read_timings(paths: RunPaths) -> dict:
    f = paths.root / "timings.json"
    if not f.exists():
        return {}
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_report(report: dict, paths: RunPaths) -> None:
    atomic_write_bytes((json.dumps(report, indent=2) + "\n").encode(), paths.report)


def cam_classes(cfg: dict) -> str:
    """Which classes the CAM (and so IRNet) maps were made for, as the report states it."""
    if bool(get(cfg, "cam.use_labels")):
        return "ground-truth image labels (cam.use_labels)"
    return f"predicted classes (sigmoid > cam.pred_threshold = {float(get(cfg, 'cam.pred_threshold')):g})"


def evaluate(cfg: dict, paths: RunPaths) -> dict:
    """Evaluate CAM, IRNet and segmentation on ``evaluate.splits``; write report and figures.

    Returns:
        The report dict, also written to ``paths.report``::

            {"splits": {"val": {"cam": {"miou_all", "miou_pos", "dice", ...}, "irnet": {...},
                                "seg": {...}}, "test": {...}},
             "cam_bg_thres": float, "cam_bg_thres_source": str, "cam_classes": str,
             "timings_s": {...},
             "missing": {split: {step: images without outputs}}}   (only when some are)
    """
    from .data import build_dataset

    from .metrics.figures import write_figures

    thres, source = cam_threshold(cfg, paths)
    report: dict = {"splits": {}, "cam_bg_thres": thres, "cam_bg_thres_source": source,
                    "cam_classes": cam_classes(cfg)}
    datasets = {}
    for split in get(cfg, "evaluate.splits"):
        base = build_dataset(cfg, split, paths, train=False)
        datasets[split] = base
        report["splits"][split], missing = evaluate_split(cfg, paths, base, thres, split)
        if missing:
            report.setdefault("missing", {})[split] = missing
    report["timings_s"] = read_timings(paths)
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
