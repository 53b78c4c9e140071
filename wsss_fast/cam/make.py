"""CAMs for whole data sets (``wsss-fast make-cam``) and their threshold sweep (``eval-cam``).

Follows ``make_cam`` / ``eval_cam`` of Ahn, Cho and Kwak, "Weakly Supervised Learning of
Instance Segmentation with Inter-pixel Relations" (IRNet), CVPR 2019, with the Grad-CAM++
maps of Viniavskyi et al., AIME 2020:

* every image of ``cam.splits`` gets ``paths.cam/<image_id>.npy``: a dict with ``keys``
  (the image's positive classes, 0-based; the ground-truth labels by default, as IRNet),
  ``cam`` ``[K, ceil(H/4), ceil(W/4)]``, ``high_res`` ``[K, H, W]`` at the working resolution
  (both normalized by their max) and ``raw`` (the unnormalized stride-4 maps), all fp16.
  Images without a positive class get ``K = 0`` (all background); with ``cam.use_labels``
  (ground-truth classes) they skip the network: SIIM's negative images, 78 % of the set.
* Existing files are skipped, so an interrupted run resumes; ``cam.num_shards`` /
  ``cam.shard_index`` (or ``torchrun``'s ``WORLD_SIZE`` / ``RANK``) split the images over
  processes or GPUs.
* ``eval_cam`` reads the cached maps only: the background score is a constant threshold
  ``t``, the prediction the argmax over ``[t, maps]``, compared with the ground truth at
  the original mask resolution (maps resized bilinearly) for every ``t`` of
  ``cam.eval_thresholds``.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import get
from ..data.base import as_is
from ..engine.paths import RunPaths
from ..engine.files import BackgroundWriter, atomic_write_bytes, load_cam_file, read_json, save_cam_file
from ..engine.transfer import InFlight, to_device

__all__ = ["make_cam", "eval_cam", "shard_of", "predict_from_cam", "checkpoint_path", "cam_threshold",
           "val_sweep"]

METRICS = ("miou_all", "miou_pos", "dice")


def shard_of(cfg: dict) -> tuple[int, int]:
    """``(shard_index, num_shards)`` from ``cam.*`` or, when ``cam.num_shards`` is 1, from torchrun's env."""
    from ..engine.dist import env_rank_world

    n = int(get(cfg, "cam.num_shards"))
    i = int(get(cfg, "cam.shard_index"))
    if n == 1:
        rank, world, _ = env_rank_world()
        i, n = (rank, world) if world > 1 else (0, 1)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"cam.shard_index must be in [0, cam.num_shards={n}), got {i}")
    return i, n


def checkpoint_path(cfg: dict, paths: RunPaths) -> Path:
    """The classifier checkpoint ``cam.checkpoint`` names (``best``, ``last`` or a path)."""
    which = str(get(cfg, "cam.checkpoint"))
    if which in ("best", "last"):
        return paths.cls / f"{which}.pt"
    return Path(which).expanduser()


class _CamInputs(Dataset):
    """make-cam's items of ``ds`` at ``indices``: the data set's own, except that with
    ``use_labels`` an image without a class is not read (``{"image_id", "size"}``, the working
    size :func:`~wsss_fast.data.transforms.eval_size` gives it): no network sees it, and decoding,
    normalizing and pinning 78 % of SIIM's images for their size alone cost the loader most of
    its work."""

    def __init__(self, cfg: dict, ds, indices: list[int], use_labels: bool) -> None:
        self.cfg, self.ds, self.indices, self.use_labels = cfg, ds, indices, use_labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict:
        from ..data.transforms import eval_size

        i = self.indices[j]
        if self.use_labels and not np.asarray(self.ds.labels[i]).any():
            return {"image_id": str(self.ds.image_ids[i]), "size": eval_size(self.cfg, lambda: self.ds.original_size(i))}
        item = self.ds[i]
        want = eval_size(self.cfg, item["orig_size"])
        if tuple(item["image"].shape[-2:]) != want:  # the size given the others would be wrong
            raise ValueError(f"make-cam: image {item['image_id']} is {tuple(item['image'].shape[-2:])} after the "
                             f"data set's transform, not {want} (dataset.image_size)")
        return item


def _groups_by_size(items: list[dict]) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for it in items:
        groups.setdefault(tuple(it["image"].shape), []).append(it)
    return list(groups.values())


def _save(path: Path, d: dict[str, np.ndarray]) -> None:
    save_cam_file(path, d["keys"], d["cam"], d["high_res"], **({"raw": d["raw"]} if "raw" in d else {}))


def _finish(paths: RunPaths, writer: BackgroundWriter, pending: tuple[list[dict], Any]) -> None:
    """Wait for a launched batch's maps and queue its files on ``writer``."""
    group, host = pending
    for it, d in zip(group, host.wait()):
        writer.submit(_save, paths.cam_file(it["image_id"]), d)


def make_cam(cfg: dict, paths: RunPaths) -> None:
    """``wsss-fast make-cam``: CAM files for every image of ``cam.splits`` (resumable, shardable).

    Reads the classifier checkpoint (``cam.checkpoint``, default ``paths.cls/best.pt``),
    extracts maps with :class:`wsss_fast.cam.CAMExtractor` (``cam.method``, ``cam.variant``,
    ``cam.scales``, ``cam.flip``; ``cam.amp``: the network under bfloat16 autocast on CUDA) in
    batches of ``cam.batch_size`` images that have classes (in loader order; with
    ``cam.use_labels`` an image without a positive class gets its empty file at once, no network)
    and writes one file per image with :func:`wsss_fast.engine.files.save_cam_file` on writer
    threads (:class:`~wsss_fast.engine.files.BackgroundWriter`), one batch in flight
    (:class:`~wsss_fast.engine.transfer.InFlight`): a batch's maps are copied out once the next
    batch is queued. Marks
    ``paths.cam`` done once the files of every split exist (whichever shard finishes last).
    """
    from ..data import build_dataset, without_masks
    from ..cls.model import load_classifier
    from ..engine.dist import rank_device
    from .extractor import CAMExtractor
    from .result import no_maps

    shard, num_shards = shard_of(cfg)
    device = rank_device(cfg)
    model = load_classifier(checkpoint_path(cfg, paths), device)
    target = get(cfg, "cam.target_layer") or getattr(model, "cam_layer", None)
    if target is None:
        raise ValueError("cam.target_layer is not set and the model names no default CAM layer")
    extractor = CAMExtractor(model, target, method=str(get(cfg, "cam.method")),
                             variant=str(get(cfg, "cam.variant")))
    scales = [float(s) for s in get(cfg, "cam.scales")]
    flip = bool(get(cfg, "cam.flip"))
    use_labels = bool(get(cfg, "cam.use_labels"))
    threshold = float(get(cfg, "cam.pred_threshold"))
    save_raw = bool(get(cfg, "cam.save_raw"))
    fields = ("keys", "cam", "high_res") + (("raw",) if save_raw else ())
    batch_size = int(get(cfg, "cam.batch_size"))
    amp = bool(get(cfg, "cam.amp")) and device.type == "cuda"
    workers = int(get(cfg, "num_workers"))
    paths.cam.mkdir(parents=True, exist_ok=True)

    every_id: list[str] = []
    for split in list(get(cfg, "cam.splits")):
        ds = without_masks(build_dataset(cfg, split, paths, train=False))
        every_id += [str(k) for k in ds.image_ids]
        mine = [i for i in range(len(ds)) if i % num_shards == shard]
        todo = [i for i in mine if not paths.cam_file(ds.image_ids[i]).exists()]
        desc = f"make-cam {split}" + (f" [shard {shard}/{num_shards}]" if num_shards > 1 else "")
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, unit="img", dynamic_ncols=True)
        loader = DataLoader(_CamInputs(cfg, ds, todo, use_labels), batch_size=batch_size, shuffle=False,
                            num_workers=workers, collate_fn=as_is, pin_memory=device.type == "cuda")
        with BackgroundWriter() as writer, InFlight(partial(_finish, paths, writer)) as flight:
            def launch(group: list[dict]) -> tuple[list[dict], Any]:
                images = torch.stack([to_device(it["image"], device) for it in group])  # pinned: queued copies
                labels = torch.stack([torch.as_tensor(it["label"]) for it in group]) if use_labels else None
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    result = extractor(images, labels, scales=scales, flip=flip, threshold=threshold,
                                       allow_empty=True)
                # one host copy per dtype and batch, queued; nothing writes to these arrays afterwards
                return group, result.to_host(torch.float16, fields)

            pending: list[dict] = []  # images with maps to compute, run batch_size at a time
            for n, items in enumerate(loader, 1):
                for it in items:
                    if "image" not in it:  # no class (cam.use_labels), no maps: no network, not read
                        writer.submit(_save, paths.cam_file(it["image_id"]), no_maps(it["size"], fields))
                    else:
                        pending.append(it)
                while len(pending) >= batch_size or (pending and n == len(loader)):  # the rest with the last
                    for group in _groups_by_size(pending[:batch_size]):
                        flight.push(launch(group))  # the batch before it is saved now, while this one runs
                    del pending[:batch_size]
                if n == len(loader):  # inside the loader's last iteration, where a profile times the loop
                    flight.drain()
                bar.update(len(items))
        bar.close()
    # checked once this process's share of every split is written: of several torchrun ranks, the
    # last to get here sees every file (a check per split could miss, for each rank, a split
    # another rank had not finished, and then no rank would mark the step done)
    if all(paths.cam_file(k).exists() for k in every_id):
        paths.mark_done(paths.cam)


def predict_from_cam(high_res: torch.Tensor, keys: np.ndarray | torch.Tensor,
                     thresholds: list[float]) -> list[torch.Tensor]:
    """Label maps from cached maps for several background thresholds (IRNet's ``eval_cam``).

    Args:
        high_res: ``[K, H, W]`` maps in [0, 1] of the classes ``keys``.
        keys: ``[K]`` 0-based foreground classes.
        thresholds: background scores.

    Returns:
        One uint8 ``[H, W]`` map per threshold: ``keys[argmax] + 1`` where the best map
        exceeds the threshold, else 0 (the argmax over ``[t, maps]``, ties to background).
    """
    from ..metrics import best_and_label

    best, label = best_and_label(high_res, keys)
    return [torch.where(best > t, label, 0).to(torch.uint8) for t in thresholds]


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    return v


def _fg_recall(conf: np.ndarray) -> float:
    """Share of ground-truth foreground pixels (any class) predicted as some foreground class."""
    fg = conf[1:].sum()
    return float(1.0 - conf[1:, 0].sum() / fg) if fg else float("nan")


class _SweepCounts(Dataset):
    """Per image, in loader workers: its confusion matrices and Dice at every threshold
    (:func:`threshold_sweep` of the labels :func:`predict_from_cam` gives each), or None
    without a mask. Reading the maps, resizing them to the mask and counting is the work here."""

    def __init__(self, ds, paths: RunPaths, thresholds: list[float], num_classes: int) -> None:
        self.ds, self.paths, self.thresholds, self.num_classes = ds, paths, thresholds, num_classes

    def __len__(self) -> int:
        return len(self.ds.image_ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        from ..metrics import best_and_label, threshold_sweep

        gt = self.ds.load_mask(i)
        if gt is None:
            return None
        d = load_cam_file(self.paths.cam_file(self.ds.image_ids[i]))
        best, label = best_and_label(np.asarray(d["high_res"], dtype=np.float32), d["keys"], tuple(np.shape(gt)))
        return threshold_sweep(best, label, gt, self.thresholds, self.num_classes)


def eval_cam(cfg: dict, paths: RunPaths) -> dict:
    """``wsss-fast eval-cam``: sweep the background threshold over the cached CAM files.

    For each split of ``cam.eval_splits`` and each threshold of ``cam.eval_thresholds``,
    computes mIoU over all images, mIoU over positive images and the mean per-image Dice
    (:class:`wsss_fast.metrics.SegEvaluator`) against the ground truth at the original
    resolution; the best threshold is chosen by ``cam.eval_metric``. Nothing is recomputed.
    Writes ``paths.cam/eval.json``.

    Returns:
        ``{"metric": ..., "splits": {split: {"thresholds": [{"threshold", "fg_recall", "miou_all",
        "miou_pos", "dice", ...}], "best": {...}, "n_images": int}}}``.

    Raises:
        FileNotFoundError: CAM files of the split are missing (run ``make-cam`` first).
        ValueError: the split has no ground-truth masks, or a bad ``cam.eval_metric``.
    """
    from ..data import build_dataset
    from ..metrics import SegEvaluator

    thresholds = [float(t) for t in get(cfg, "cam.eval_thresholds")]
    metric = str(get(cfg, "cam.eval_metric"))
    if metric not in METRICS:
        raise ValueError(f"cam.eval_metric must be one of {METRICS}, got {metric!r}")
    report: dict[str, Any] = {"metric": metric, "splits": {}}
    for split in list(get(cfg, "cam.eval_splits")):
        ds = build_dataset(cfg, split, paths, train=False)
        missing = [k for k in ds.image_ids if not paths.cam_file(k).exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(ds)} CAM files of split '{split}' are missing in "
                                    f"{paths.cam} (first: {paths.cam_file(missing[0]).name}); run "
                                    "`wsss-fast make-cam` first")
        names = ["background"] + list(getattr(ds, "class_names", []) or [])
        n_cls = int(getattr(ds, "num_classes", len(names) - 1)) + 1
        evals = [SegEvaluator(n_cls, class_names=names if len(names) == n_cls else None) for _ in thresholds]
        loader = DataLoader(_SweepCounts(ds, paths, thresholds, n_cls), batch_size=None, collate_fn=as_is,
                            num_workers=int(get(cfg, "num_workers")))
        for i, counts in enumerate(tqdm(loader, desc=f"eval-cam {split}", unit="img", dynamic_ncols=True)):
            if counts is None:
                raise ValueError(f"eval-cam: split '{split}' has no ground-truth mask for image {ds.image_ids[i]}")
            positive = bool(np.asarray(ds.labels[i]).any())
            for ev, c, d in zip(evals, *counts):
                ev.add_counts(c, d, positive)
        rows = []
        for t, ev in zip(thresholds, evals):
            r = ev.result()
            rows.append({"threshold": t, **{k: r[k] for k in METRICS}, "fg_recall": _fg_recall(ev.conf_all),
                         "iou_all": r["iou_all"], "n_images": r["n_images"], "n_pos": r["n_pos"]})
        scored = [r for r in rows if not math.isnan(r[metric])]
        best = max(scored, key=lambda r: r[metric]) if scored else None
        report["splits"][split] = {"thresholds": rows, "best": best, "n_images": len(ds)}
        print(f"eval-cam [{split}] {len(ds)} images")
        print("  threshold  mIoU(all)  mIoU(pos)   Dice")
        for r in rows:
            mark = "  <- best" if r is best else ""
            print(f"  {r['threshold']:9.3f}  {r['miou_all']:9.4f}  {r['miou_pos']:9.4f}  {r['dice']:6.4f}{mark}")
    atomic_write_bytes(json.dumps(_nan_to_none(report), indent=2).encode(), paths.cam / "eval.json")
    return report


def val_sweep(cfg: dict, paths: RunPaths, run_sweep: bool = True) -> dict | None:
    """The val split's entry of ``cam/eval.json`` (``{"thresholds": [...], "best": {...}}``).

    The sweep is run here (on val only) when the file lacks val, CAM files exist and
    ``run_sweep``. None when there is no sweep (no CAMs, or val has no masks).
    """
    def read() -> dict | None:
        data = read_json(paths.cam / "eval.json") or {}
        val = (data.get("splits") or {}).get("val")
        return {**val, "metric": data.get("metric", "?")} if isinstance(val, dict) else None

    if read() is None and run_sweep and paths.cam.is_dir() and any(paths.cam.glob("*.npy")):
        try:
            eval_cam({**cfg, "cam": {**get(cfg, "cam"), "eval_splits": ["val"]}}, paths)
        except (FileNotFoundError, ValueError, KeyError) as e:  # no val CAMs / masks
            print(f"eval-cam: no threshold sweep on val ({e})")
    return read()


def cam_threshold(cfg: dict, paths: RunPaths, run_sweep: bool = True) -> tuple[float, str]:
    """The CAM background threshold of the run and where it came from.

    ``evaluate.cam_bg_thres`` when it is a number. Otherwise the best threshold of
    ``eval-cam`` on val (:func:`val_sweep`), so that test is evaluated with a threshold
    chosen on val only. Falls back to ``cam.bg_thres``.
    """
    forced = get(cfg, "evaluate.cam_bg_thres")
    if forced is not None:
        return float(forced), "evaluate.cam_bg_thres"
    val = val_sweep(cfg, paths, run_sweep)
    best = (val or {}).get("best") or {}
    if isinstance(best.get("threshold"), (int, float)):
        return float(best["threshold"]), f"eval-cam best on val by {val.get('metric', '?')}"
    return float(get(cfg, "cam.bg_thres")), "cam.bg_thres"
