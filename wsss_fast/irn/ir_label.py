"""Inter-pixel relation (IR) labels: confident foreground / background from CAMs.

Follows IRNet's ``cam_to_ir_label`` (Ahn et al., CVPR 2019): the high-resolution CAM is
padded with a background channel at ``conf_fg_thres`` (confident fg) and, separately, at
``conf_bg_thres`` (confident bg); each argmax labelling is refined by a dense CRF on the
image, and they are combined into: class where fg is confident, 0 where bg is confident,
255 (ignore) elsewhere. As in Viniavskyi et al. (AIME 2020), small connected fg regions
with low mean confidence are then removed as noise (set to 255).

Output: ``paths.ir_label/<id>.png``, uint8, at the working resolution of the CAMs.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Iterable

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from ..config import get
from ..engine.dist import resolve_device
from ..engine.files import load_cam_file, write_png
from ..engine.paths import RunPaths
from . import common
from .common import as_list, resize_image_uint8
from .crf import CRFParams, crf_inference_labels, resolve_backend, to_rgb_uint8


def _padded_argmax(cams: np.ndarray, thres: float) -> np.ndarray:
    """argmax of the CAMs padded with a bg channel at ``thres`` (channel indices)."""
    padded = np.concatenate([np.full((1,) + cams.shape[1:], thres, dtype=np.float32), cams], axis=0)
    return np.argmax(padded, axis=0)


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
    cams = np.asarray(cam["high_res"], dtype=np.float32)
    keys = np.pad(np.asarray(cam["keys"], dtype=np.int64) + 1, (1, 0))
    if cams.ndim != 3 or cams.shape[0] != keys.shape[0] - 1:
        raise ValueError(f"CAM high_res must be [K, H, W] with K = len(keys) = {keys.shape[0] - 1}, "
                         f"got {tuple(cams.shape)}")
    img = to_rgb_uint8(img)
    if img.shape[:2] != cams.shape[1:]:
        raise ValueError(f"image {tuple(img.shape[:2])} and CAM {tuple(cams.shape[1:])} sizes differ")
    crf = CRFParams.from_cfg(get(cfg, "ir_label.crf")) if get(cfg, "ir_label.crf.enabled") else None
    preds = np.stack([_padded_argmax(cams, float(get(cfg, "ir_label.conf_fg_thres"))),
                      _padded_argmax(cams, float(get(cfg, "ir_label.conf_bg_thres")))])
    if crf is not None:  # both maps in one call (one batch of 2 for the compiled op)
        backend, device = _crf_backend(cfg)
        preds = crf_inference_labels(img, preds, keys.shape[0], crf, backend, device)
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


def _process(index: int) -> str:
    cfg, paths, ds = _WORKER["cfg"], _WORKER["paths"], _WORKER["ds"]
    image_id = ds.image_ids[index]
    cam = load_cam_file(paths.cam_file(image_id))
    size = tuple(np.asarray(cam["high_res"]).shape[1:])
    img = resize_image_uint8(np.asarray(ds.load_image(index)), size)
    write_png(cam_to_ir_label(img, cam, cfg), paths.ir_label / f"{image_id}.png")
    return image_id


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
    if get(cfg, "ir_label.crf.enabled") and _crf_backend(cfg)[1].type == "cuda":
        workers = 0  # the compiled CRF runs on the GPU from the main process
    bar = tqdm(total=len(todo), desc=f"ir-label {split}", unit="img")
    if workers <= 1:
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


def make_ir_label(cfg: dict, paths: RunPaths, splits: Iterable[str] | None = None) -> None:
    """Step ``make-ir-label``: write ``paths.ir_label/<id>.png`` for every image of the splits.

    Args:
        cfg: run configuration (``ir_label`` section: thresholds, ``crf`` (with ``backend``),
            ``min_region``, ``min_region_conf``, ``workers``, ``splits``). With the compiled CRF on
            CUDA the images run in the main process (no workers).
        paths: run paths; reads ``paths.cam``, writes ``paths.ir_label``.
        splits: overrides ``ir_label.splits``.

    Resumable: images whose PNG exists are skipped.
    """
    paths.ir_label.mkdir(parents=True, exist_ok=True)
    workers = int(get(cfg, "ir_label.workers"))
    for split in as_list(splits if splits is not None else get(cfg, "ir_label.splits")):
        _run_split(cfg, paths, split, workers)
    paths.mark_done(paths.ir_label)
