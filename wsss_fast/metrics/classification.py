"""Multi-label F1 for the step-1 classifier.

Model selection (``cls`` step, best checkpoint) uses the **micro** F1: TP, FP and FN
are summed over all (image, class) pairs before F1 is taken. For SIIM (one class) micro
and macro are the same number; for VOC micro F1 weights every label equally, which is
stable when rare classes have few validation images. ``macro`` (the mean of per-class F1
over classes that occur in labels or predictions) is reported beside it.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["multilabel_f1"]


def multilabel_f1(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                  threshold: float = 0.5, average: str = "micro") -> float | dict:
    """F1 of thresholded multi-label predictions.

    Args:
        probs: [B, N] probabilities (apply a sigmoid to logits first).
        labels: [B, N] multi-hot ground truth (0/1).
        threshold: a class is predicted when its probability is >= threshold.
        average: ``"micro"`` (used for model selection), ``"macro"``, or ``"all"`` for a dict
            ``{"micro", "macro", "per_class"}``.

    Returns:
        The F1 (0.0 when there are no positives in labels nor predictions).
    """
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if p.ndim == 1:
        p, y = p[:, None], y.reshape(-1, 1)
    if p.shape != y.shape:
        raise ValueError(f"probs and labels must have the same shape [B, N], got {p.shape} and {y.shape}")
    pred = p >= threshold
    y = y > 0.5
    tp = (pred & y).sum(0).astype(np.float64)
    fp = (pred & ~y).sum(0).astype(np.float64)
    fn = (~pred & y).sum(0).astype(np.float64)

    def f1(tp_, fp_, fn_):
        d = 2 * tp_ + fp_ + fn_
        return np.where(d > 0, 2 * tp_ / np.maximum(d, 1e-12), np.nan)

    micro = f1(tp.sum(), fp.sum(), fn.sum())
    micro = float(0.0 if np.isnan(micro) else micro)
    per_class = f1(tp, fp, fn)
    macro = float(np.nanmean(per_class)) if (~np.isnan(per_class)).any() else 0.0
    if average == "micro":
        return micro
    if average == "macro":
        return macro
    if average == "all":
        return {"micro": micro, "macro": macro, "per_class": per_class.tolist()}
    raise ValueError(f"average must be 'micro', 'macro' or 'all', got {average!r}")
