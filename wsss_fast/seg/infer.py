"""Step 3 inference: segmentation predictions at the original resolution.

Viniavskyi et al., AIME 2020: the trained U-Net / DeepLabV3+ predicts masks for the
validation and test images; logits are computed at the training resolution, turned
into probabilities (sigmoid for the binary task, softmax otherwise), optionally
averaged with the horizontally flipped input (flip TTA), upsampled bilinearly to the
original image size and thresholded (binary) or arg-maxed (multi-class). With
``seg.threshold: val`` the binary threshold is chosen on the val split first (the best of
``seg.eval_thresholds`` by ``seg.eval_metric``), written to ``seg_pred/threshold.json``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import get
from ..engine.dist import resolve_device
from ..engine.paths import RunPaths
from ..engine.files import BackgroundWriter, atomic_write_bytes, write_png
from ..engine.transfer import HostCopy, InFlight, to_device
from .data import ImageDataset, eval_transform, seg_image_size
from .model import model_from_cfg


def load_seg_model(cfg: dict, paths: RunPaths, device: torch.device) -> torch.nn.Module:
    """The trained model from ``seg/final.pt`` (clear error when it is missing)."""
    ckpt = paths.seg / "final.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"segmentation checkpoint not found: {ckpt}; run train-seg first")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = {**cfg, "seg": {**get(cfg, "seg"), "encoder_weights_path": None}}
    for key in ("arch", "encoder"):
        if state.get(key):
            cfg["seg"][key] = state[key]
    model = model_from_cfg(cfg, int(state["num_classes"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


@torch.no_grad()
def predict_probs(model: torch.nn.Module, x: torch.Tensor, flip: bool = False,
                  amp: bool = False) -> torch.Tensor:
    """Class probabilities.

    Args:
        model: maps [B, 3, H, W] to logits [B, C, H, W].
        x: normalized images [B, 3, H, W].
        flip: average with the prediction on the horizontally flipped images.
        amp: run the network in float16 autocast (CUDA).

    Returns:
        [B, 1, H, W] foreground probability (C = 1) or [B, C, H, W] softmax.
    """
    def run(inp: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp and inp.is_cuda):
            logits = model(inp).float()
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)

    probs = run(x)
    if flip:
        probs = 0.5 * (probs + run(x.flip(-1)).flip(-1))
    return probs


def probs_to_label(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """[C, H, W] probabilities -> uint8 [H, W] label map (binary: 1 where p > threshold)."""
    if probs.shape[0] == 1:
        return (probs[0] > threshold).to(torch.uint8)
    return probs.argmax(0).to(torch.uint8)


def _loader(cfg: dict, base, todo: list[int], device: torch.device) -> DataLoader:
    """Batches of ``todo`` for ``device``; for a GPU in pinned memory, whose copies are queued, not waited for."""
    ds = torch.utils.data.Subset(ImageDataset(base, eval_transform(cfg)), todo)
    bs = int(get(cfg, "seg.eval_batch_size")) if seg_image_size(cfg) else 1
    return DataLoader(ds, batch_size=bs, num_workers=int(get(cfg, "num_workers")), pin_memory=device.type == "cuda")


def _batch_predictions(model: torch.nn.Module, loader: DataLoader, device: torch.device, flip: bool,
                       amp: bool):
    """Yield, per loader batch, ``[(dataset index, probabilities [C, H0, W0] at the original size)]``."""
    for batch in loader:
        probs = predict_probs(model, batch["image"].to(device, non_blocking=True), flip=flip, amp=amp)
        preds = []
        for j, idx in enumerate(batch["index"].tolist()):
            h0, w0 = batch["orig_size"][j].tolist()
            p = probs[j:j + 1]
            if p.shape[-2:] != (h0, w0):
                p = F.interpolate(p, size=(h0, w0), mode="bilinear", align_corners=False)
            preds.append((idx, p[0]))
        yield preds


def _predictions(model: torch.nn.Module, loader: DataLoader, device: torch.device, flip: bool, amp: bool):
    """Yield ``(dataset index, probabilities [C, H0, W0] at the original size)``."""
    for preds in _batch_predictions(model, loader, device, flip, amp):
        yield from preds


def _write_prediction(label: np.ndarray, prob: np.ndarray | None, out: Path, name: str) -> None:
    """``out/<name>_prob.png`` (when given), then ``out/<name>.png``, whose existence marks the image done."""
    if prob is not None:
        write_png(prob, out / f"{name}_prob.png")
    write_png(label, out / f"{name}.png")


def _finish(out: Path, names, writer: BackgroundWriter, pending: tuple[list[int], bool, HostCopy]) -> None:
    """Wait for a batch's label maps (and probabilities) and queue their PNGs on ``writer``."""
    indices, with_probs, copy = pending
    host = [t.numpy() for t in copy.wait()]
    for j, idx in enumerate(indices):
        writer.submit(_write_prediction, host[j], host[len(indices) + j] if with_probs else None, out, names[idx])


def seg_threshold(cfg: dict, paths: RunPaths, model: torch.nn.Module | None = None,
                  device: torch.device | None = None) -> dict:
    """``seg.threshold`` as a number: as configured, or chosen on val (``val``).

    With ``val``, the model predicts the val split once and every threshold of
    ``seg.eval_thresholds`` is scored against the masks by ``seg.eval_metric`` (the first
    best in list order). The choice is stored in ``seg_pred/threshold.json`` and reused.

    Returns:
        ``{"threshold": float, "source": str, ...}`` (with the sweep when chosen on val).
    """
    from ..data import build_dataset
    from ..metrics import BatchedSweeps, SegEvaluator

    thr = get(cfg, "seg.threshold")
    if thr != "val":
        return {"threshold": float(thr), "source": "seg.threshold"}
    f = paths.seg_pred / "threshold.json"
    if f.exists():
        return json.loads(f.read_text())
    metric = str(get(cfg, "seg.eval_metric"))
    if metric not in ("miou_all", "miou_pos", "dice"):
        raise ValueError(f"seg.eval_metric must be miou_all | miou_pos | dice, got {metric!r}")
    thresholds = [float(t) for t in get(cfg, "seg.eval_thresholds")]
    device = device or resolve_device(cfg)
    model = model or load_seg_model(cfg, paths, device)
    base = build_dataset(cfg, "val", paths, train=False)
    evals = [SegEvaluator(2) for _ in thresholds]
    paths.seg_pred.mkdir(parents=True, exist_ok=True)
    flip, amp = bool(get(cfg, "seg.tta_flip")), bool(get(cfg, "seg.amp")) and device.type == "cuda"
    loader = _loader(cfg, base, list(range(len(base.image_ids))), device)
    sweeps = BatchedSweeps(thresholds, device)
    bar = tqdm(total=len(base.image_ids), desc="predict-seg: choose the threshold on val", leave=False)
    for preds in _batch_predictions(model, loader, device, flip, amp):
        if preds[0][1].shape[0] != 1:  # multi-class: no threshold to choose
            res = {"threshold": None, "source": "multi-class: argmax, no threshold"}
            atomic_write_bytes((json.dumps(res, indent=2) + "\n").encode(), f)
            return res
        for idx, p in preds:  # every threshold in one pass, where p is: probs_to_label(p, t) of each
            gt = base.load_mask(idx)
            if gt is None:
                raise ValueError(f"predict-seg: seg.threshold 'val' needs val masks; {base.image_ids[idx]} has none")
            positive = bool(np.asarray(base.labels[idx]).any())
            gt = to_device(torch.as_tensor(np.asarray(gt)), p.device)
            sweeps.add(evals, p[0], torch.ones_like(p[0], dtype=torch.long), gt, positive,
                       f"predict-seg: val image {base.image_ids[idx]}")
        sweeps.flush()  # the batch's one wait
        bar.update(len(preds))
    bar.close()
    sweep = {f"{t:g}": {k: v for k, v in ev.result().items() if k in ("miou_all", "miou_pos", "dice")}
             for t, ev in zip(thresholds, evals)}
    best = max(thresholds, key=lambda t: np.nan_to_num(sweep[f"{t:g}"][metric], nan=-1.0))
    res = {"threshold": best, "source": f"best of seg.eval_thresholds on val by seg.eval_metric ({metric})",
           "metric": metric, "sweep": sweep}
    paths.seg_pred.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes((json.dumps(res, indent=2) + "\n").encode(), f)
    print(f"predict-seg: threshold {best:g} (val {metric} {sweep[f'{best:g}'][metric]:.4f})")
    return res


def predict_seg(cfg: dict, paths: RunPaths) -> None:
    """Write ``seg_pred/<id>.png`` for every image of the ``evaluate.splits``.

    Existing predictions are kept (resume); ``seg_pred/.done`` marks the end. With
    ``seg.save_probs`` the foreground probability (binary) is also stored as
    ``seg_pred/<id>_prob.png`` (uint8, p * 255) at the original resolution. The binary
    threshold is :func:`seg_threshold`'s. One batch in flight
    (:class:`~wsss_fast.engine.transfer.InFlight`): a batch's maps are copied out once the next
    batch is queued, and its PNGs encoded and written on writer threads
    (:class:`~wsss_fast.engine.files.BackgroundWriter`).
    """
    from ..data import build_dataset

    device = resolve_device(cfg)
    model = load_seg_model(cfg, paths, device)
    flip = bool(get(cfg, "seg.tta_flip"))
    amp = bool(get(cfg, "seg.amp")) and device.type == "cuda"
    save_probs = bool(get(cfg, "seg.save_probs"))
    out = paths.seg_pred
    out.mkdir(parents=True, exist_ok=True)
    thr = seg_threshold(cfg, paths, model, device)["threshold"]
    thr = 0.5 if thr is None else float(thr)  # multi-class: unused
    for split in get(cfg, "evaluate.splits"):
        base = build_dataset(cfg, split, paths, train=False)
        todo = [i for i, name in enumerate(base.image_ids) if not (out / f"{name}.png").exists()]
        if not todo:
            continue
        loader = _loader(cfg, base, todo, device)
        bar = tqdm(total=len(todo), desc=f"predict-seg {split}", leave=False)
        with BackgroundWriter() as writer, InFlight(partial(_finish, out, base.image_ids, writer)) as flight:
            for n, preds in enumerate(_batch_predictions(model, loader, device, flip, amp), 1):
                # the batch's maps on the device, one queued copy to the host; they are waited for
                # once the next batch is queued, and the PNGs encoded on writer threads
                maps = [probs_to_label(p, thr) for _, p in preds]
                with_probs = save_probs and preds[0][1].shape[0] == 1
                if with_probs:
                    maps += [(p[0].clamp(0, 1) * 255).round().byte() for _, p in preds]
                flight.push(([idx for idx, _ in preds], with_probs, HostCopy(maps)))
                if n == len(loader):  # inside the loader's last iteration, where a profile times the loop
                    flight.drain()
                bar.update(len(preds))
        bar.close()
    paths.mark_done(out)
