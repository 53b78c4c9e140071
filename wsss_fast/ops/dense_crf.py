"""Dense CRF inference (pydensecrf's ``DenseCRF2D``), with CPU and CUDA kernels.

The fully connected CRF of Krähenbühl & Koltun ("Efficient Inference in Fully Connected CRFs
with Gaussian Edge Potentials", NeurIPS 2011) with pydensecrf's kernels and defaults, as
IRNet and most weakly supervised segmentation code call it::

    d = dcrf.DenseCRF2D(W, H, L); d.setUnaryEnergy(U)
    d.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    d.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=img, compat=bilateral_compat)
    Q = d.inference(iterations)

Gaussian features ``(x, y) / sxy``, bilateral ``(x / sxy, y / sxy, r / srgb, g / srgb, b / srgb)``
on the raw uint8 values (a grey image is three equal channels), Potts compatibilities,
symmetric normalization ``norm = 1 / sqrt(K 1 + 1e-20)`` and mean field
``Q <- softmax(-U + sum_k w_k norm_k K_k (norm_k Q))`` from ``Q_0 = softmax(-U)``, every lattice
as pydensecrf builds it (:mod:`wsss_fast.ops.permutohedral_filter`). A batch of images runs in
one call: on the CPU in parallel over images, on CUDA in one lattice per kernel for the batch.
Not differentiable (inference only).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _ext
from ..reference import dense_crf as _ref
from . import _utils

__all__ = ["dense_crf", "dense_crf_unary", "unary_from_labels", "unary_from_softmax"]

_HAS_OP = _ext.has_op("dense_crf")


def _check(unary: Tensor, image: Tensor, gaussian_sxy: float, bilateral_sxy: float, bilateral_srgb: float,
           iterations: int, what: str = "unary") -> None:
    """Check the arguments of :func:`dense_crf_unary` (``what`` names the first one)."""
    name = "dense_crf"
    _utils.check_tensor(name, what, unary, ndim=4, layout="[B, L, H, W]")
    _utils.check_tensor(name, "image", image)
    if unary.dtype != torch.float32:
        raise TypeError(f"{name}: {what} must be float32, got {unary.dtype}")
    if unary.shape[1] < 2:
        raise ValueError(f"{name}: {what} must have at least 2 labels, got shape {list(unary.shape)}")
    if image.dim() != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"{name}: image must be [B, 3, H, W] or [B, 1, H, W], got shape {list(image.shape)}")
    if image.dtype != torch.uint8:
        raise TypeError(f"{name}: image must be uint8 (values 0..255), got {image.dtype}")
    if image.shape[0] != unary.shape[0] or image.shape[2:] != unary.shape[2:]:
        raise ValueError(f"{name}: image {list(image.shape)} must match {what} {list(unary.shape)} in B, H and W")
    if image.device != unary.device:
        raise ValueError(f"{name}: {what} and image must be on the same device, got {unary.device} and "
                         f"{image.device}")
    for label, v in (("gaussian_sxy", gaussian_sxy), ("bilateral_sxy", bilateral_sxy),
                     ("bilateral_srgb", bilateral_srgb)):
        if not (math.isfinite(float(v)) and float(v) > 0):
            raise ValueError(f"{name}: {label} must be a finite number > 0, got {v!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"{name}: iterations must be an int >= 0, got {iterations!r}")


def unary_from_softmax(probs: Tensor, clip: float = 1e-5) -> Tensor:
    """``-log(clip(probs, clip, 1))`` as float32 (pydensecrf's ``unary_from_softmax``, scale None).

    Args:
        probs: ``[B, L, H, W]`` class probabilities.
        clip: smallest probability.

    Returns:
        float32 unary energies of probs' shape.
    """
    _utils.check_tensor("unary_from_softmax", "probs", probs, floating=True)
    return _ref.unary_from_softmax(probs, clip)


def unary_from_labels(labels: Tensor, n_labels: int, gt_prob: float, zero_unsure: bool = True) -> Tensor:
    """pydensecrf's ``unary_from_labels``: ``-log(gt_prob)`` at the given label, ``-log((1 - gt_prob)
    / (n_labels - 1))`` elsewhere; with ``zero_unsure`` label 0 is "unknown" (uniform energy) and
    label k > 0 is class k - 1.

    Args:
        labels: integer ``[B, H, W]`` label maps.
        n_labels: number of classes L (>= 2).
        gt_prob: confidence of the labels, in (0, 1).
        zero_unsure: treat 0 as unknown (pydensecrf's default; IRNet passes False).

    Returns:
        float32 ``[B, L, H, W]``.

    Raises:
        ValueError: bad labels, ``n_labels`` or ``gt_prob``.
    """
    if not 0 < gt_prob < 1:
        raise ValueError(f"unary_from_labels: gt_prob must be in (0, 1), got {gt_prob!r}")
    if n_labels < 2:
        raise ValueError(f"unary_from_labels: n_labels must be >= 2, got {n_labels}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 3 or labels.is_floating_point() or \
            labels.is_complex():
        raise ValueError(f"unary_from_labels: labels must be an integer [B, H, W] tensor, got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} {list(getattr(labels, 'shape', []))}")
    hi = n_labels if zero_unsure else n_labels - 1
    if labels.numel():
        lo, top = torch.stack(torch.aminmax(labels)).tolist()  # one read of the range
        if lo < 0 or top > hi:
            raise ValueError(f"unary_from_labels: labels must lie in [0, {hi}], got [{lo}, {top}]")
    return _ref.unary_from_labels(labels, n_labels, gt_prob, zero_unsure)


def dense_crf_unary(unary: Tensor, image: Tensor, *, gaussian_sxy: float = 3.0, gaussian_compat: float = 3.0,
                    bilateral_sxy: float = 50.0, bilateral_srgb: float = 5.0, bilateral_compat: float = 10.0,
                    iterations: int = 10) -> Tensor:
    """Mean-field marginals of the dense CRF from unary energies.

    Args:
        unary: float32 ``[B, L, H, W]`` energies (``-log p``; see :func:`unary_from_softmax`,
            :func:`unary_from_labels`), L >= 2.
        image: uint8 ``[B, 3, H, W]`` (RGB) or ``[B, 1, H, W]`` (grey), same device.
        gaussian_sxy: width of the Gaussian (smoothness) kernel in pixels, > 0.
        gaussian_compat: its Potts weight.
        bilateral_sxy: spatial width of the bilateral (appearance) kernel in pixels, > 0.
        bilateral_srgb: its colour width in grey levels, > 0.
        bilateral_compat: its Potts weight.
        iterations: mean-field iterations (0 returns ``softmax(-unary)``).

    Returns:
        float32 ``[B, L, H, W]`` marginals Q (pydensecrf's ``inference`` per image, reshaped).

    Raises:
        TypeError, ValueError: bad shapes, dtypes, devices or parameters.
    """
    _check(unary, image, gaussian_sxy, bilateral_sxy, bilateral_srgb, iterations)
    args = (float(gaussian_sxy), float(gaussian_compat), float(bilateral_sxy), float(bilateral_srgb),
            float(bilateral_compat), int(iterations))
    if _utils.use_kernel("dense_crf", _HAS_OP):
        return torch.ops.wsss_fast.dense_crf(unary, image, *args)
    return _ref.dense_crf_unary(unary, image, gaussian_sxy=args[0], gaussian_compat=args[1],
                                bilateral_sxy=args[2], bilateral_srgb=args[3], bilateral_compat=args[4],
                                iterations=args[5])


def dense_crf(probs: Tensor, image: Tensor, *, gaussian_sxy: float = 3.0, gaussian_compat: float = 3.0,
              bilateral_sxy: float = 50.0, bilateral_srgb: float = 5.0, bilateral_compat: float = 10.0,
              iterations: int = 10) -> Tensor:
    """Refine class probabilities with a dense CRF (unaries ``-log(clip(probs, 1e-5, 1))``, as
    pydensecrf's ``unary_from_softmax``).

    Args:
        probs: float32 ``[B, L, H, W]`` probabilities (a softmax over L >= 2).
        image: uint8 ``[B, 3, H, W]`` or ``[B, 1, H, W]``.
        gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat,
            iterations: see :func:`dense_crf_unary` (defaults: IRNet's).

    Returns:
        float32 ``[B, L, H, W]`` marginals.
    """
    _check(probs, image, gaussian_sxy, bilateral_sxy, bilateral_srgb, iterations, what="probs")
    return dense_crf_unary(unary_from_softmax(probs), image, gaussian_sxy=gaussian_sxy,
                           gaussian_compat=gaussian_compat, bilateral_sxy=bilateral_sxy,
                           bilateral_srgb=bilateral_srgb, bilateral_compat=bilateral_compat, iterations=iterations)


def _fake(unary, image, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat,
          iterations):
    return torch.empty_like(unary, memory_format=torch.contiguous_format)


if _HAS_OP:
    torch.library.register_fake("wsss_fast::dense_crf", _fake)
    _utils.register_not_differentiable(
        "wsss_fast::dense_crf", "detach the unaries (or run it under torch.no_grad()); dense_crf is inference only")
