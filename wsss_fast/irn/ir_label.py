"""Inter-pixel relation (IR) labels: confident foreground / background from CAMs.

Follows IRNet's ``cam_to_ir_label`` (Ahn et al., CVPR 2019): the high-resolution CAM is
padded with a background channel at ``conf_fg_thres`` (confident fg) and, separately, at
``conf_bg_thres`` (confident bg); each argmax labelling is refined by a dense CRF on the
image, and they are combined into: class where fg is confident, 0 where bg is confident,
255 (ignore) elsewhere. As in Viniavskyi et al. (AIME 2020), small connected fg regions
with low mean confidence are then removed as noise (set to 255).

Either threshold may be ``val``: chosen inside the run on the val split, since IRNet's
constants (0.30 / 0.05) fit its ImageNet-pretrained VOC CAMs only. Confident fg starts at the
threshold of ``cam.eval_thresholds`` whose CRF-refined fg map has the highest IoU with val's
masks: the CRF erases confident regions much smaller than its bilateral kernel (small
lesions), so the choice is made after it. Confident bg ends at the largest threshold of the
CAM sweep on val (``eval-cam``) below the fg threshold that keeps at least ``bg_recall`` of
val's foreground pixels above it. The values, the fg sweep and their source go to
``paths.ir_label/thresholds.json`` (and into the report).

Output: ``paths.ir_label/<id>.png``, uint8, at the working resolution of the CAMs.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from functools import partial
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..cam.make import val_sweep
from ..config import get
from ..data.base import as_is
from ..engine.dist import resolve_device
from ..engine.files import BackgroundWriter, atomic_write_bytes, load_cam_file, write_png
from ..engine.paths import RunPaths
from ..engine.transfer import HostCopy, InFlight
from . import common
from .common import as_list, resize_image_uint8
from .crf import CRFParams, crf_inference_labels, crf_queue_many, resolve_backend, to_rgb_uint8


def _fg_maps(cams: np.ndarray, thresholds: Sequence[float], dtype: type = np.int64) -> np.ndarray:
    """For each threshold, the argmax of the CAMs padded with a bg channel at it (IRNet's
    ``np.pad(..., constant_values=thres)`` then ``argmax``), all thresholds from one max.

    Args:
        cams: float ``[K, H, W]``.
        thresholds: ``T`` background scores (compared in float32, as the padded channel is).
        dtype: of the result (``np.uint8`` needs ``K < 256``).

    Returns:
        ``[T, H, W]`` channel indices: 0 where no CAM exceeds the threshold (a tie is
        background), else 1 + the first CAM of the highest score.
    """
    t = np.asarray(thresholds, dtype=np.float32).reshape(-1, 1, 1)
    if cams.shape[0] == 0:
        return np.zeros((t.shape[0],) + cams.shape[1:], dtype=dtype)
    arg = (cams.argmax(0) + 1).astype(dtype)
    return np.greater(cams.max(0)[None], t) * arg  # bool x index: the index where above, else 0


def _fg_counts(preds: np.ndarray, keys: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``[4, T]`` int64: true positive, false positive and false negative pixels and whether any
    fg was kept, of the fg maps ``preds`` (``[T, H, W]`` channel indices) against ``gt``
    (``[H, W]`` labels, 255 ignored); ``keys`` ``[K + 1]``: the label of each channel."""
    fg = preds > 0
    valid = gt != 255
    hit = np.take(keys.astype(np.int64), preds) == gt  # the channel's label is the truth
    out = np.zeros((4, preds.shape[0]), dtype=np.int64)
    gt_fg = np.count_nonzero((gt > 0) & valid)
    for k in range(preds.shape[0]):  # a whole-map count_nonzero is fast, one along axes is not
        out[0, k] = np.count_nonzero(fg[k] & hit[k])  # a hit on a fg channel is never an ignored pixel
        pos = np.count_nonzero(fg[k] & valid)
        out[1, k], out[2, k], out[3, k] = pos - out[0, k], gt_fg - out[0, k], pos > 0 or fg[k].any()
    return out


def _crf_backend(cfg: dict) -> tuple[str, torch.device]:
    """``ir_label.crf.backend`` resolved, and the device the compiled op runs on."""
    backend = resolve_backend(get(cfg, "ir_label.crf.backend"))
    return backend, (resolve_device(cfg) if backend == "wsss_fast" else torch.device("cpu"))


def remove_small_regions(conf: np.ndarray, cams: np.ndarray, keys: np.ndarray, min_region: int,
                         min_region_conf: float) -> np.ndarray:
    """Set connected fg regions smaller than ``min_region`` pixels whose mean CAM is below
    ``min_region_conf`` to 255 (ignore).

    Args:
        conf: uint8 ``[H, W]`` IR label.
        cams: float ``[K, H, W]`` CAMs of the positive classes.
        keys: int ``[K + 1]`` label id of each padded channel (0 = bg, then class + 1).
        min_region: size threshold in pixels (<= 0 disables the filter).
        min_region_conf: mean-CAM threshold.

    Returns:
        The filtered label map (a copy).
    """
    conf = conf.copy()
    if min_region <= 0:
        return conf
    for k, cls in enumerate(keys[1:]):
        comp, n = ndimage.label(conf == cls)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(np.ones_like(comp), comp, idx)
        means = ndimage.mean(cams[k], comp, idx)
        drop = idx[(sizes < min_region) & (means < min_region_conf)]
        if drop.size:
            conf[np.isin(comp, drop)] = 255
    return conf


def cam_to_ir_label(img: np.ndarray, cam: dict, cfg: dict) -> np.ndarray:
    """One image's IR label.

    Args:
        img: uint8 image ``[H, W]`` or ``[H, W, 3]`` at the CAM's ``high_res`` resolution.
        cam: a CAM dict (``keys`` [K], ``high_res`` [K, H, W]).
        cfg: the run configuration (``ir_label`` section).

    Returns:
        uint8 ``[H, W]``: c + 1 for confident fg of class c, 0 confident bg, 255 elsewhere.
    """
    img, cams, keys, preds = _ir_inputs(img, cam, cfg)
    if get(cfg, "ir_label.crf.enabled"):  # both maps in one call (one batch of 2 for the compiled op)
        backend, device = _crf_backend(cfg)
        preds = crf_inference_labels(img, preds, keys.shape[0], CRFParams.from_cfg(get(cfg, "ir_label.crf")),
                                     backend, device)
    return _ir_combine(preds, cams, keys, cfg)


def _ir_inputs(img: np.ndarray, cam: dict, cfg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(RGB image, CAMs [K, H, W], label of each channel [K + 1] (0 = bg), the confident-fg and
    confident-bg argmax maps [2, H, W] before the CRF)`` of one image."""
    cams = np.asarray(cam["high_res"], dtype=np.float32)
    keys = np.pad(np.asarray(cam["keys"], dtype=np.int64) + 1, (1, 0))
    if cams.ndim != 3 or cams.shape[0] != keys.shape[0] - 1:
        raise ValueError(f"CAM high_res must be [K, H, W] with K = len(keys) = {keys.shape[0] - 1}, "
                         f"got {tuple(cams.shape)}")
    img = to_rgb_uint8(img)
    if img.shape[:2] != cams.shape[1:]:
        raise ValueError(f"image {tuple(img.shape[:2])} and CAM {tuple(cams.shape[1:])} sizes differ")
    if "val" in (get(cfg, "ir_label.conf_fg_thres"), get(cfg, "ir_label.conf_bg_thres")):
        raise ValueError("cam_to_ir_label needs numeric ir_label.conf_fg_thres / conf_bg_thres; "
                         "make_ir_label resolves 'val' with ir_thresholds()")
    preds = _fg_maps(cams, [float(get(cfg, "ir_label.conf_fg_thres")), float(get(cfg, "ir_label.conf_bg_thres"))])
    return img, cams, keys, preds


def _ir_combine(preds: np.ndarray, cams: np.ndarray, keys: np.ndarray, cfg: dict) -> np.ndarray:
    """The IR label from the (CRF-refined) confident-fg and confident-bg maps ``[2, H, W]``."""
    fg_conf, bg_conf = keys[preds[0]], keys[preds[1]]
    conf = fg_conf.copy()
    conf[fg_conf == 0] = 255
    conf[(bg_conf + fg_conf) == 0] = 0
    conf = conf.astype(np.uint8)
    return remove_small_regions(conf, cams, keys, int(get(cfg, "ir_label.min_region")),
                                float(get(cfg, "ir_label.min_region_conf")))


# ---------------------------------------------------------------------------------------------
# worker processes: each builds the dataset once

_WORKER: dict = {}


def _init_worker(cfg: dict, root: str, split: str, pool: bool = False) -> None:
    if pool:  # one intra-op thread per worker process (the compiled CRF is parallel otherwise)
        torch.set_num_threads(1)
    paths = RunPaths(root)
    _WORKER.update(cfg=cfg, paths=paths, ds=common.build_split(cfg, split, paths, train=False))


def _load(ds, paths: RunPaths, index: int) -> tuple[str, np.ndarray | None, dict]:
    """``(image id, image at the CAM's resolution, CAM dict)``; no image (None) for a CAM
    without classes, whose IR label is :func:`_background_only`."""
    image_id = ds.image_ids[index]
    cam = load_cam_file(paths.cam_file(image_id))
    high_res = np.asarray(cam["high_res"])
    if high_res.ndim == 3 and high_res.shape[0] == 0 and np.asarray(cam["keys"]).size == 0:
        return image_id, None, cam
    return image_id, resize_image_uint8(np.asarray(ds.load_image(index)), tuple(high_res.shape[1:])), cam


def _background_only(cam: dict) -> np.ndarray:
    """The IR label of an image without classes, as :func:`cam_to_ir_label` gives it: all
    confident background (uint8 zeros at the CAM's size)."""
    return np.zeros(np.asarray(cam["high_res"]).shape[1:], dtype=np.uint8)


def _process(index: int) -> str:
    cfg, paths, ds = _WORKER["cfg"], _WORKER["paths"], _WORKER["ds"]
    image_id, img, cam = _load(ds, paths, index)
    label = _background_only(cam) if img is None else cam_to_ir_label(img, cam, cfg)
    write_png(label, paths.ir_label / f"{image_id}.png")
    return image_id


class _Inputs(Dataset):
    """The CRF's inputs of each image (:func:`_ir_inputs`), prepared in loader workers."""

    def __init__(self, cfg: dict, paths: RunPaths, ds, todo: list[int]) -> None:
        self.cfg, self.paths, self.ds, self.todo = cfg, paths, ds, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, j: int) -> tuple:
        """``(image id, RGB uint8 [H, W, 3], CAMs [K, H, W], keys [K + 1], fg/bg maps uint8 [2, H, W])``:
        tensors, which reach the main process through shared memory (pickled arrays would queue
        several MB per image through one pipe), the CAMs in the file's dtype, the maps in uint8.
        An image without classes is ``(image id, None, its IR label, None, None)``."""
        image_id, img, cam = _load(self.ds, self.paths, self.todo[j])
        if img is None:  # no classes: no image, no CRF
            return image_id, None, torch.from_numpy(_background_only(cam)), None, None
        img, cams, keys, preds = _ir_inputs(img, cam, self.cfg)
        if keys.shape[0] > 256:
            raise ValueError(f"make-ir-label: {keys.shape[0] - 1} classes in one image, at most 255")
        return (image_id, torch.from_numpy(np.require(img, requirements=["C", "W"])),
                torch.from_numpy(np.require(cam["high_res"], requirements=["C", "W"])), keys,
                torch.from_numpy(preds.astype(np.uint8)))


def _launch(items: list[tuple], params: CRFParams, device: torch.device) -> list[tuple[list[tuple], HostCopy]]:
    """Queue the CRF of a batch's images with classes, one call per (size, label count), and
    the copies of their refined maps to the host."""
    groups: dict = {}
    for it in items:
        groups.setdefault((tuple(it[1].shape[:2]), it[3].shape[0]), []).append(it)
    return [(group, crf_queue_many([it[1] for it in group], [it[4] for it in group], n_labels, params, device))
            for (_, n_labels), group in groups.items()]  # uint8 maps both ways


def _finish(cfg: dict, paths: RunPaths, writer: BackgroundWriter,
            pending: list[tuple[list[tuple], HostCopy]]) -> None:
    """Wait for a launched batch's refined maps and queue its IR labels on ``writer``."""
    for group, queued in pending:
        for it, refined in zip(group, queued.wait()):
            writer.submit(_write_label, cfg, paths, it, refined.numpy())


def _write_label(cfg: dict, paths: RunPaths, item: tuple, refined: np.ndarray) -> None:
    """Combine an image's refined maps into its IR label and write it (on a writer thread)."""
    image_id, _, cams, keys, _ = item
    cams = np.asarray(cams, dtype=np.float32)  # as cam_to_ir_label reads them
    write_png(_ir_combine(refined, cams, keys, cfg), paths.ir_label / f"{image_id}.png")


def _run_batched(cfg: dict, paths: RunPaths, ds, todo: list[int], bar: tqdm, device: torch.device) -> None:
    """The compiled CRF in the main process on ``ir_label.batch_size`` images per call (the maps
    of the images of one size and label count in one batch), the inputs prepared by
    ``num_workers`` loader processes and the PNGs written by a thread pool, one batch in flight
    (:class:`~wsss_fast.engine.transfer.InFlight`): a batch's labels are made once the next
    batch is queued. Images without classes are written at once."""
    params = CRFParams.from_cfg(get(cfg, "ir_label.crf"))
    loader = DataLoader(_Inputs(cfg, paths, ds, todo), batch_size=int(get(cfg, "ir_label.batch_size")),
                        num_workers=int(get(cfg, "num_workers")), collate_fn=list,
                        pin_memory=device.type == "cuda")  # images and maps go to a GPU from pinned memory
    with BackgroundWriter() as writer, InFlight(partial(_finish, cfg, paths, writer)) as flight:
        for n, items in enumerate(loader, 1):
            for it in items:
                if it[1] is None:  # no classes: all background, no CRF
                    writer.submit(write_png, it[2].numpy(), paths.ir_label / f"{it[0]}.png")
            with_classes = [it for it in items if it[1] is not None]
            if with_classes:  # (an empty push would finish the batch in flight before a next one is queued)
                flight.push(_launch(with_classes, params, device))
            if n == len(loader):  # inside the loader's last iteration, where a profile times the loop
                flight.drain()
            bar.update(len(items))


def _run_split(cfg: dict, paths: RunPaths, split: str, workers: int) -> int:
    ds = common.build_split(cfg, split, paths, train=False)
    ids = list(ds.image_ids)
    missing = [i for i in ids if not paths.cam_file(i).exists()]
    if missing:
        raise FileNotFoundError(
            f"make-ir-label: {len(missing)} CAM files of split '{split}' are missing, e.g. "
            f"{paths.cam_file(missing[0])}; run make-cam first (or set ir_label.splits)")
    todo = [i for i, image_id in enumerate(ids) if not (paths.ir_label / f"{image_id}.png").exists()]
    if not todo:
        return 0
    bar = tqdm(total=len(todo), desc=f"ir-label {split}", unit="img")
    backend, device = _crf_backend(cfg)
    if get(cfg, "ir_label.crf.enabled") and backend == "wsss_fast" and (device.type == "cuda" or workers <= 1):
        _run_batched(cfg, paths, ds, todo, bar, device)  # the compiled CRF on batches from the main process
    elif workers <= 1:
        _init_worker(cfg, str(paths.root), split)
        for i in todo:
            _process(i)
            bar.update()
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, str(paths.root), split, True)) as pool:
            for _ in pool.imap_unordered(_process, todo, chunksize=1):
                bar.update()
    bar.close()
    return len(todo)


class _FgValInputs(Dataset):
    """Per val image, in loader workers: None without CAM classes; ``{"id", "no_mask": True}``
    without a mask; else ``{"id", "counts"}`` (:func:`_fg_counts`) without a CRF, or the CRF's
    inputs ``{"id", "img" [H, W, 3], "preds" [T, H, W], "keys", "gt"}`` (uint8 tensors, through
    shared memory)."""

    def __init__(self, ds, paths: RunPaths, thresholds: list[float], crf: bool) -> None:
        self.ds, self.paths, self.thresholds, self.crf = ds, paths, thresholds, crf

    def __len__(self) -> int:
        return len(self.ds.image_ids)

    def __getitem__(self, i: int) -> dict | None:
        from PIL import Image

        image_id = str(self.ds.image_ids[i])
        cam = load_cam_file(self.paths.cam_file(image_id))
        cams = np.asarray(cam["high_res"], dtype=np.float32)
        if cams.shape[0] == 0:
            return None
        keys = np.pad(np.asarray(cam["keys"], dtype=np.int64) + 1, (1, 0))
        gt = self.ds.load_mask(i)
        if gt is None:
            return {"id": image_id, "no_mask": True}
        size = tuple(cams.shape[1:])
        gt = np.asarray(Image.fromarray(np.asarray(gt, np.uint8)).resize(size[::-1], Image.NEAREST))
        preds = _fg_maps(cams, self.thresholds, np.uint8 if keys.shape[0] <= 256 else np.int64)
        if not self.crf:
            return {"id": image_id, "counts": torch.from_numpy(_fg_counts(preds, keys, gt))}
        img = to_rgb_uint8(resize_image_uint8(np.asarray(self.ds.load_image(i)), size))
        return {"id": image_id, "keys": keys, "gt": torch.from_numpy(np.require(gt, requirements=["C", "W"])),
                "img": torch.from_numpy(np.require(img, requirements=["C", "W"])), "preds": torch.from_numpy(preds)}


def _fg_launch(it: dict, crf: CRFParams, backend: str, device: torch.device) -> HostCopy:
    """Queue the CRF of a val image's fg maps (all thresholds in one call; pydensecrf: done here)."""
    keys, img, preds = it["keys"], it["img"], it["preds"]
    if backend == "wsss_fast":
        return crf_queue_many([img], [preds], keys.shape[0], crf, device)
    return HostCopy([torch.from_numpy(crf_inference_labels(img.numpy(), preds.numpy(), keys.shape[0], crf, backend,
                                                           device))])


def _fg_finish(counts: np.ndarray, pending: tuple[dict, HostCopy]) -> None:
    """Add a val image's counts (:func:`_fg_counts` of its refined fg maps) to ``counts`` in place."""
    it, queued = pending
    counts += _fg_counts(queued.wait()[0].numpy(), it["keys"], it["gt"].numpy())


def fg_threshold_on_val(cfg: dict, paths: RunPaths) -> tuple[float, list[dict]]:
    """The confident-fg threshold with the best IoU on val, after the CRF.

    For every val image with CAM classes, the fg map of each threshold of
    ``cam.eval_thresholds`` (argmax of the CAMs padded with the threshold) is refined by the
    CRF (all thresholds in one call) and compared with the mask at the CAM's resolution.
    ``num_workers`` loader processes read the files and build the maps (and count them
    without a CRF); the CRF runs in this process, on its backend's device, one image in flight:
    an image's maps are counted once the next image's CRF is queued.

    Returns:
        ``(threshold, rows)``: rows ``{"threshold", "iou", "precision", "recall", "images"}``
        (``images``: how many kept some confident fg); ties go to the higher threshold.
    """
    thresholds = sorted(float(t) for t in get(cfg, "cam.eval_thresholds"))
    crf = CRFParams.from_cfg(get(cfg, "ir_label.crf")) if get(cfg, "ir_label.crf.enabled") else None
    backend, device = _crf_backend(cfg) if crf is not None else ("", torch.device("cpu"))
    ds = common.build_split(cfg, "val", paths, train=False)
    missing = [f for f in map(paths.cam_file, ds.image_ids) if not f.exists()]
    if missing:
        raise FileNotFoundError(f"make-ir-label: conf_fg_thres 'val' needs the val CAMs; {missing[0]} is missing")
    loader = DataLoader(_FgValInputs(ds, paths, thresholds, crf is not None), batch_size=None,
                        collate_fn=as_is, num_workers=int(get(cfg, "num_workers")),
                        pin_memory=device.type == "cuda")  # image and maps go to a GPU from pinned memory
    counts = np.zeros((4, len(thresholds)), np.int64)
    with InFlight(partial(_fg_finish, counts)) as flight:  # an image's CRF queued before the last one is counted
        for n, it in enumerate(tqdm(loader, desc="ir-label: conf_fg_thres on val", unit="img"), 1):
            if it is None:  # no CAM classes
                pass
            elif it.get("no_mask"):
                raise ValueError(f"make-ir-label: conf_fg_thres 'val' needs val masks; {it['id']} has none")
            elif crf is None:
                counts += it["counts"].numpy()
            else:
                flight.push((it, _fg_launch(it, crf, backend, device)))
            if n == len(loader):  # inside the loader's last iteration, where a profile times the loop
                flight.drain()
    tp, fp, fn, kept = counts
    rows = [{"threshold": t, "iou": float(tp[k] / max(1, tp[k] + fp[k] + fn[k])),
             "precision": float(tp[k] / max(1, tp[k] + fp[k])), "recall": float(tp[k] / max(1, tp[k] + fn[k])),
             "images": int(kept[k])} for k, t in enumerate(thresholds)]
    best = max(reversed(rows), key=lambda r: r["iou"])  # ties: the higher threshold
    return float(best["threshold"]), rows


def ir_thresholds(cfg: dict, paths: RunPaths) -> dict:
    """``ir_label.conf_fg_thres`` / ``conf_bg_thres`` as numbers, each ``val`` one chosen here.

    Returns:
        ``{"conf_fg_thres": {"value", "source"}, "conf_bg_thres": {"value", "source"}}``.

    Raises:
        ValueError: a threshold is ``val`` but the run has no CAM sweep on val.
    """
    fg, bg = get(cfg, "ir_label.conf_fg_thres"), get(cfg, "ir_label.conf_bg_thres")
    out = {"conf_fg_thres": {"value": fg, "source": "ir_label.conf_fg_thres"},
           "conf_bg_thres": {"value": bg, "source": "ir_label.conf_bg_thres"}}
    if "val" not in (fg, bg):
        return {k: {**v, "value": float(v["value"])} for k, v in out.items()}
    sweep = val_sweep(cfg, paths)  # the choice needs val's sweep, not the report's CAM threshold
    if sweep is None:
        raise ValueError("ir_label thresholds 'val' need the CAM threshold sweep on val (cam/eval.json): "
                         "make CAMs for val (cam.splits) with ground-truth masks, or give numbers")
    if fg == "val":
        best, rows = fg_threshold_on_val(cfg, paths)
        out["conf_fg_thres"] = {"value": best, "sweep": rows,
                                "source": "best IoU on val of the CRF-refined confident fg over cam.eval_thresholds"}
    if bg == "val":
        top = float(out["conf_fg_thres"]["value"])
        need = float(get(cfg, "ir_label.bg_recall"))
        rows = sorted((r for r in sweep["thresholds"] if r["threshold"] < top), key=lambda r: r["threshold"])
        ok = [r for r in rows if r.get("fg_recall") is not None and r["fg_recall"] >= need]
        pick = ok[-1] if ok else (rows[0] if rows else {"threshold": 0.0, "fg_recall": None})
        out["conf_bg_thres"] = {"value": float(pick["threshold"]), "fg_recall": pick.get("fg_recall"),
                                "source": f"largest val-swept CAM threshold below conf_fg_thres keeping "
                                          f">= ir_label.bg_recall {need:g} of val's foreground above it"
                                          + ("" if ok else " (none did: the smallest)")}
    return out


def make_ir_label(cfg: dict, paths: RunPaths, splits: Iterable[str] | None = None) -> None:
    """Step ``make-ir-label``: write ``paths.ir_label/<id>.png`` for every image of the splits.

    Args:
        cfg: run configuration (``ir_label`` section: thresholds (numbers or ``val``), ``crf`` (with ``backend``),
            ``min_region``, ``min_region_conf``, ``workers``, ``splits``). With the compiled CRF on
            CUDA the images run in the main process (no workers).
        paths: run paths; reads ``paths.cam``, writes ``paths.ir_label``.
        splits: overrides ``ir_label.splits``.

    Resumable: images whose PNG exists are skipped.
    """
    paths.ir_label.mkdir(parents=True, exist_ok=True)
    chosen = ir_thresholds(cfg, paths)
    atomic_write_bytes((json.dumps(chosen, indent=2) + "\n").encode(), paths.ir_label / "thresholds.json")
    print("make-ir-label: confident fg above {:g}, confident bg below {:g}".format(
        chosen["conf_fg_thres"]["value"], chosen["conf_bg_thres"]["value"]))
    cfg = {**cfg, "ir_label": {**get(cfg, "ir_label"), **{k: v["value"] for k, v in chosen.items()}}}
    workers = int(get(cfg, "ir_label.workers"))
    for split in as_list(splits if splits is not None else get(cfg, "ir_label.splits")):
        _run_split(cfg, paths, split, workers)
    paths.mark_done(paths.ir_label)
