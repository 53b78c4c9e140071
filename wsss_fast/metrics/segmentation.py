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

__all__ = ["confusion_matrix", "miou", "dice_per_image", "SegEvaluator"]

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
        g = _np(gt)
        conf = confusion_matrix(pred, g, self.num_classes, self.ignore_index)
        if positive is None:
            positive = bool(((g != 0) & (g != self.ignore_index)).any())
        self.conf_all += conf
        if positive:
            self.conf_pos += conf
            self.n_pos += 1
        self.n_images += 1
        self.dices.append(dice_per_image(_np(pred), g))

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
