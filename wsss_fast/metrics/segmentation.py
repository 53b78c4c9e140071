"""Segmentation metrics: confusion matrix, mIoU, per-image Dice, and an accumulator.

mIoU follows the appendix of Viniavskyi, Dobko and Dobosevych, "Weakly-Supervised
Segmentation for Disease Localization in Chest X-Ray Images" (AIME 2020): for every
class, TP / (TP + FP + FN) computed from ONE confusion matrix accumulated over all pixels
of a split (pixels labelled 255 in the ground truth are excluded), then averaged over the
classes (background + pneumothorax for SIIM, 21 classes for VOC). It is reported over all
images and over positive images only (the paper's Table 3). Dice is computed per image
(1 when prediction and ground truth are both empty, the SIIM-ACR competition's convention)
and averaged over images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.transfer import to_device, to_host

__all__ = ["confusion_matrix", "miou", "dice_per_image", "image_counts", "best_and_label", "threshold_sweep",
           "sweep_counts", "add_sweep", "BatchedSweeps", "SegEvaluator"]

ArrayLike = np.ndarray | torch.Tensor


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_matrix(pred: ArrayLike, gt: ArrayLike, num_classes: int,
                     ignore_index: int | None = 255) -> np.ndarray:
    """Confusion matrix of two label maps.

    Args:
        pred: predicted label map, any shape (e.g. [H, W] or [B, H, W]), integer values
            in [0, num_classes).
        gt: ground-truth label map of the same shape; ``ignore_index`` pixels are skipped.
        num_classes: number of classes INCLUDING background (SIIM 2, VOC 21).
        ignore_index: ground-truth value to exclude (None: none).

    Returns:
        int64 [num_classes, num_classes]; rows = ground truth, columns = prediction.

    Raises:
        ValueError: shapes differ, or a non-ignored value lies outside [0, num_classes).
    """
    p = _np(pred).astype(np.int64, copy=False).reshape(-1)
    g = _np(gt).astype(np.int64, copy=False).reshape(-1)
    if _np(pred).shape != _np(gt).shape:
        raise ValueError(f"pred and gt must have the same shape, got {_np(pred).shape} and "
                         f"{_np(gt).shape}")
    if ignore_index is not None:
        keep = g != ignore_index
        p, g = p[keep], g[keep]
    if g.size and (g.min() < 0 or g.max() >= num_classes):
        raise ValueError(f"gt has values outside [0, {num_classes}) other than ignore_index="
                         f"{ignore_index}: found {sorted(set(np.unique(g).tolist()))[:10]}")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"pred has values outside [0, {num_classes}) on non-ignored pixels: "
                         f"found {sorted(set(np.unique(p).tolist()))[:10]}")
    return np.bincount(g * num_classes + p, minlength=num_classes ** 2).reshape(
        num_classes, num_classes).astype(np.int64)


def miou(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean IoU from a confusion matrix.

    Args:
        conf: [C, C] confusion matrix (rows = ground truth, columns = prediction).

    Returns:
        ``(mean, per_class)``: per_class[c] = TP / (TP + FP + FN) as float64 [C]. A class
        with TP + FP + FN = 0 (absent from both prediction and truth) gets NaN and is left
        out of the mean.
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = np.where(denom > 0, tp / np.maximum(denom, 1e-300), np.nan)
    valid = ~np.isnan(per_class)
    mean = float(per_class[valid].mean()) if valid.any() else float("nan")
    return mean, per_class


def dice_per_image(pred_bin: ArrayLike, gt_bin: ArrayLike) -> float:
    """Dice of one binary prediction against one binary truth.

    Args:
        pred_bin: [H, W] prediction; nonzero = foreground.
        gt_bin: [H, W] truth; nonzero = foreground (255 pixels, if any, are ignored).

    Returns:
        2|P∩G| / (|P| + |G|), and 1.0 when both are empty (competition convention).
    """
    p, g = _np(pred_bin), _np(gt_bin)
    if p.shape != g.shape:
        raise ValueError(f"pred_bin and gt_bin must have the same shape, got {p.shape} and {g.shape}")
    keep = g != 255
    p = (p != 0) & keep
    g = (g != 0) & keep
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int((p & g).sum()) / denom


def best_and_label(maps: ArrayLike, keys: ArrayLike,
                   size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's best score and its class label: what a background threshold acts on.

    Args:
        maps: ``[K, H, W]`` class maps (CAMs, walk maps), on any device.
        keys: ``[K]`` 0-based classes of the channels.
        size: ``(H0, W0)`` to resize the maps to first (bilinear); None: as they are.

    Returns:
        ``(best, label)``: float32 and int64 ``[H0, W0]`` on the maps' device; ``label`` =
        key + 1 of the first best channel; ``best`` is -inf without channels (never
        foreground). ``where(best > t, label, 0)`` is the label map of threshold ``t``.
    """
    rw = torch.as_tensor(np.asarray(maps, dtype=np.float32) if not isinstance(maps, torch.Tensor) else maps).float()
    if size is not None and tuple(rw.shape[-2:]) != tuple(size):
        rw = F.interpolate(rw[None], size=tuple(size), mode="bilinear", align_corners=False)[0] \
            if rw.shape[0] else rw.new_zeros((0, *size))
    if rw.shape[0] == 0:
        return rw.new_full(rw.shape[-2:], float("-inf")), torch.zeros(rw.shape[-2:], dtype=torch.long, device=rw.device)
    arg = torch.argmax(rw, dim=0)  # the first best channel
    lut = to_device(torch.from_numpy(np.asarray(keys, dtype=np.int64) + 1), rw.device)  # queued, not waited for
    return rw.gather(0, arg[None])[0], lut[arg]


def threshold_sweep(best: ArrayLike, label: ArrayLike, gt: ArrayLike, thresholds: list[float],
                    num_classes: int, ignore_index: int | None = 255) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix and Dice of ``where(best > t, label, 0)`` for every threshold at once.

    The prediction of a background threshold ``t``: a pixel takes ``label`` (its best class)
    where its best score exceeds ``t``, else background (ties go to background, as an argmax
    over ``[t, maps...]``). One pass over the pixels serves every threshold: each pixel counts
    once in a histogram over (number of thresholds below its score, truth, label), whose
    cumulative sums are the confusion matrices. Runs where the tensors are (CPU or CUDA).

    Args:
        best: ``[H, W]`` best class score per pixel (float; NaN and -inf never foreground).
        label: ``[H, W]`` the best class's label (1..num_classes-1), read where foreground.
        gt: ``[H, W]`` ground truth (``ignore_index`` pixels are skipped).
        thresholds: ``T`` background scores (compared in float32, any order).
        num_classes: classes INCLUDING background.
        ignore_index: ground-truth value to exclude (None: none).

    Returns:
        ``(conf, dice)``: int64 ``[T, num_classes, num_classes]`` (rows = ground truth) and
        float64 ``[T]`` per-image Dice of the binary maps (1 when both are empty), the same as
        :func:`confusion_matrix` and :func:`dice_per_image` of each threshold's prediction.
    """
    if not (tuple(np.shape(best)) == tuple(np.shape(label)) == tuple(np.shape(gt))):
        raise ValueError(f"best, label and gt must have the same shape, got {tuple(np.shape(best))}, "
                         f"{tuple(np.shape(label))} and {tuple(np.shape(gt))}")
    b = torch.as_tensor(best)
    dev = b.device
    lab = torch.as_tensor(label, device=dev)
    g = torch.as_tensor(np.asarray(gt) if not isinstance(gt, torch.Tensor) else gt, device=dev)
    ts = torch.tensor([float(t) for t in thresholds], dtype=torch.float32, device=dev)
    conf, dice, bad = sweep_counts(b, lab, g, ts, num_classes, ignore_index)
    if bool(bad.any()):  # name the values only when some are out of range
        c, g, lab = int(num_classes), g.long().reshape(-1), lab.long().reshape(-1)
        out = (g < 0) | (g >= c)
        if ignore_index is not None:
            out &= g != ignore_index
        if bool(out.any()):
            raise ValueError(f"gt has values outside [0, {c}) other than ignore_index={ignore_index}: "
                             f"found {sorted(set(g[out].unique().tolist()))[:10]}")
        below = torch.searchsorted(torch.sort(ts).values, torch.nan_to_num(b.float().reshape(-1), nan=float("-inf")))
        out = (below > 0) & ((lab < 1) | (lab >= c))
        raise ValueError(f"label has values outside [1, {c}) where the score exceeds a threshold: "
                         f"found {sorted(set(lab[out].unique().tolist()))[:10]}")
    return conf.cpu().numpy().astype(np.int64), dice.cpu().numpy()


def sweep_counts(best: torch.Tensor, label: torch.Tensor, gt: torch.Tensor, thresholds: torch.Tensor,
                 num_classes: int, ignore_index: int | None = 255) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`threshold_sweep` where the tensors are, without reading them (no wait for a GPU).

    Invalid values are counted, not raised: ``bad`` holds the number of ground-truth pixels
    outside ``[0, num_classes)`` (other than ``ignore_index``) and of foreground pixels whose
    label is outside ``[1, num_classes)``; the caller checks it once the counts reach the host.

    Args:
        best: ``[H, W]`` float scores; label: ``[H, W]`` integer labels; gt: ``[H, W]`` integer
            ground truth, all on one device.
        thresholds: float32 ``[T]`` background scores on that device.
        num_classes: classes INCLUDING background; ignore_index: ground truth to skip.

    Returns:
        ``(conf, dice, bad)``: int64 ``[T, C, C]``, float64 ``[T]`` (as :func:`threshold_sweep`)
        and int64 ``[2]``, on the tensors' device.
    """
    b = torch.nan_to_num(best.float().reshape(-1), nan=float("-inf"))
    lab, g = label.long().reshape(-1), gt.long().reshape(-1)
    c, n_t = int(num_classes), int(thresholds.numel())
    bad_gt = (g < 0) | (g >= c)
    if ignore_index is not None:  # ignored pixels go to an extra truth row, dropped at the end
        ignored = g == ignore_index
        bad_gt &= ~ignored
        g = torch.where(ignored, torch.full_like(g, c), g)
    sorted_t, order = torch.sort(thresholds, stable=True)
    below = torch.searchsorted(sorted_t, b, right=False)  # thresholds < score: foreground for those
    lab = torch.where(below > 0, lab, torch.zeros_like(lab))  # read only where foreground somewhere
    bad_label = (below > 0) & ((lab < 1) | (lab >= c))
    g, lab = g.clamp(0, c), lab.clamp(0, c - 1)  # (no-ops for valid input) inside the histogram
    rows = c + 1
    idx, size = (below * rows + g) * c + lab, (n_t + 1) * rows * c
    if idx.is_cuda:  # CUDA's bincount reads the input's max (a wait); integer sums are exact in any order
        hist = torch.zeros(size, dtype=torch.long, device=idx.device).scatter_add_(0, idx, torch.ones_like(idx))
    else:
        hist = torch.bincount(idx, minlength=size)
    hist = hist.reshape(n_t + 1, rows, c)[:, :c]  # without the ignored pixels
    fg = hist.flip(0).cumsum(0).flip(0)[1:]  # [T, C, C]: pixels with more than j thresholds below
    conf = fg.clone()
    conf[:, :, 0] += hist.sum((0, 2))[None] - fg.sum(2)  # the rest: background
    pred_fg = fg.sum((1, 2)).double()
    inter = fg[:, 1:].sum((1, 2)).double()
    gt_fg = hist[:, 1:].sum().double()
    dice = torch.where(pred_fg + gt_fg > 0, 2 * inter / (pred_fg + gt_fg).clamp_min(1), torch.ones_like(inter))
    inv = torch.empty_like(order)
    inv[order] = torch.arange(n_t, device=order.device)
    return conf[inv], dice[inv], torch.stack([bad_gt.sum(), bad_label.sum()])


def image_counts(pred: ArrayLike, gt: ArrayLike, num_classes: int,
                 ignore_index: int | None = 255) -> tuple[np.ndarray, float]:
    """What :meth:`SegEvaluator.add` counts of one image (e.g. computed in a loader worker
    and added with :meth:`SegEvaluator.add_counts`).

    Args:
        pred: ``[H, W]`` predicted label map; gt: ``[H, W]`` ground truth, same size.
        num_classes: classes INCLUDING background; ignore_index: ground truth to skip.

    Returns:
        ``(confusion matrix int64 [C, C], Dice)``.
    """
    g = _np(gt)
    return confusion_matrix(pred, g, num_classes, ignore_index), dice_per_image(_np(pred), g)


class SegEvaluator:
    """Accumulates the paper's metrics over a split, one image at a time.

    Args:
        num_classes: classes INCLUDING background (SIIM 2, VOC 21).
        ignore_index: ground-truth label excluded from every metric.
        class_names: optional names for the per-class output (background first).

    Example:
        >>> ev = SegEvaluator(2)
        >>> ev.add(pred, gt, positive=bool(gt.any()))
        >>> ev.result()["miou_pos"]
    """

    def __init__(self, num_classes: int, ignore_index: int = 255,
                 class_names: list[str] | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes counts background too and must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        self.conf_all = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.conf_pos = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.dices: list[float] = []
        self.n_images = 0
        self.n_pos = 0

    def add(self, pred: ArrayLike, gt: ArrayLike, positive: bool | None = None) -> None:
        """Add one image.

        Args:
            pred: [H, W] predicted label map (0 = background, c + 1 = class c).
            gt: [H, W] ground-truth label map (255 = ignore), same size as ``pred``.
            positive: whether the image counts as positive (has any foreground); None
                infers it from ``gt``.
        """
        self.add_counts(*image_counts(pred, gt, self.num_classes, self.ignore_index), positive)

    def add_counts(self, conf: np.ndarray, dice: float, positive: bool | None = None) -> None:
        """Add one image from its confusion matrix and Dice (e.g. from :func:`threshold_sweep`).

        Args:
            conf: ``[C, C]`` confusion matrix of the image (rows = ground truth).
            dice: the image's Dice.
            positive: whether the image counts as positive; None: it has ground-truth foreground.
        """
        conf = np.asarray(conf, dtype=np.int64)
        if conf.shape != (self.num_classes, self.num_classes):
            raise ValueError(f"conf must be [{self.num_classes}, {self.num_classes}], got {list(conf.shape)}")
        if positive is None:
            positive = bool(conf[1:].sum() > 0)
        self.conf_all += conf
        if positive:
            self.conf_pos += conf
            self.n_pos += 1
        self.n_images += 1
        self.dices.append(float(dice))

    def merge(self, other: "SegEvaluator") -> "SegEvaluator":
        """Add the images another evaluator (of the same classes) has counted, e.g. another rank's.

        Returns:
            ``self``.
        """
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(f"cannot merge an evaluator of {other.num_classes} classes (ignore "
                             f"{other.ignore_index}) into one of {self.num_classes} (ignore {self.ignore_index})")
        self.conf_all += other.conf_all
        self.conf_pos += other.conf_pos
        self.dices += other.dices
        self.n_images += other.n_images
        self.n_pos += other.n_pos
        return self

    def result(self) -> dict[str, Any]:
        """The metrics so far.

        Returns:
            ``{"miou_all", "miou_pos", "dice"}`` (floats; NaN where no image counted) plus
            ``"iou_all"`` / ``"iou_pos"`` (dict class name -> IoU), ``"n_images"``, ``"n_pos"``.
        """
        m_all, pc_all = miou(self.conf_all)
        m_pos, pc_pos = miou(self.conf_pos) if self.n_pos else (float("nan"),
                                                                 np.full(self.num_classes, np.nan))
        return {
            "miou_all": m_all if self.n_images else float("nan"),
            "miou_pos": m_pos,
            "dice": float(np.mean(self.dices)) if self.dices else float("nan"),
            "iou_all": {n: float(v) for n, v in zip(self.class_names, pc_all)},
            "iou_pos": {n: float(v) for n, v in zip(self.class_names, pc_pos)},
            "n_images": self.n_images,
            "n_pos": self.n_pos,
        }


def add_sweep(evaluators: list[SegEvaluator], best: ArrayLike, label: ArrayLike, gt: ArrayLike,
              thresholds: list[float], positive: bool | None = None) -> None:
    """Add one image to one evaluator per threshold: ``evaluators[i]`` gets the prediction
    ``where(best > thresholds[i], label, 0)`` (:func:`threshold_sweep`, one pass for all)."""
    if len(evaluators) != len(thresholds):
        raise ValueError(f"{len(evaluators)} evaluators for {len(thresholds)} thresholds")
    if not evaluators:
        return
    ev0 = evaluators[0]
    conf, dice = threshold_sweep(best, label, gt, thresholds, ev0.num_classes, ev0.ignore_index)
    for ev, c, d in zip(evaluators, conf, dice):
        ev.add_counts(c, d, positive)


class BatchedSweeps:
    """Threshold sweeps of several images counted where their maps are (:func:`sweep_counts`) and
    added to their evaluators together, after one copy to the host: on a GPU one wait per batch,
    not several per image.

    Args:
        thresholds: ``T`` background scores (compared in float32, any order).
        device: where the maps of :meth:`add` are.
    """

    def __init__(self, thresholds: list[float], device: torch.device | str) -> None:
        self.thresholds = to_device(torch.tensor([float(t) for t in thresholds], dtype=torch.float32), device)
        self._pending: list[tuple[list[SegEvaluator], bool | None, str, tuple[torch.Tensor, ...]]] = []

    def add(self, evaluators: list[SegEvaluator], best: torch.Tensor, label: torch.Tensor, gt: torch.Tensor,
            positive: bool | None, name: str) -> None:
        """Count one image, as :func:`add_sweep` would add it; ``name`` names it in an error."""
        if len(evaluators) != self.thresholds.numel():
            raise ValueError(f"{len(evaluators)} evaluators for {self.thresholds.numel()} thresholds")
        ev = evaluators[0]
        self._pending.append((evaluators, positive, name,
                              sweep_counts(best, label, gt, self.thresholds, ev.num_classes, ev.ignore_index)))

    def flush(self) -> None:
        """Copy the counts to the host (the one wait), check them and add them to the evaluators.

        Raises:
            ValueError: an image's ground truth or labels are out of range (its ``name`` first).
        """
        pending, self._pending = self._pending, []
        host = to_host([t for *_, counts in pending for t in counts])
        for k, (evaluators, positive, name, _) in enumerate(pending):
            conf, dice, bad = host[3 * k: 3 * k + 3]
            if bad.any():
                c, ignore = evaluators[0].num_classes, evaluators[0].ignore_index
                raise ValueError(f"{name}: {int(bad[0])} mask pixels outside [0, {c}) other than {ignore}, "
                                 f"{int(bad[1])} labels outside [1, {c})")
            for ev, cf, d in zip(evaluators, conf, dice):
                ev.add_counts(cf.numpy(), float(d), positive)
