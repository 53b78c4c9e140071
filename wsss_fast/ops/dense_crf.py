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

import torch
from torch import Tensor

from .. import _ext
from ..reference import dense_crf as _ref
from ..reference.dense_crf import unary_from_labels, unary_from_softmax

__all__ = ["dense_crf", "dense_crf_unary", "unary_from_labels", "unary_from_softmax"]


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
    _ref._check_crf(unary, image, gaussian_sxy, bilateral_sxy, bilateral_srgb, iterations)
    args = (float(gaussian_sxy), float(gaussian_compat), float(bilateral_sxy), float(bilateral_srgb),
            float(bilateral_compat), int(iterations))
    if _ext.has_op("dense_crf"):
        return torch.ops.wsss_fast.dense_crf(unary, image, *args)
    _ext.warn_fallback("dense_crf")
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
    _ref._check_crf(probs, image, gaussian_sxy, bilateral_sxy, bilateral_srgb, iterations, what="probs")
    return dense_crf_unary(unary_from_softmax(probs), image, gaussian_sxy=gaussian_sxy,
                           gaussian_compat=gaussian_compat, bilateral_sxy=bilateral_sxy,
                           bilateral_srgb=bilateral_srgb, bilateral_compat=bilateral_compat, iterations=iterations)


def _register() -> None:
    @torch.library.register_fake("wsss_fast::dense_crf")
    def _fake(unary, image, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat,
              iterations):
        return torch.empty_like(unary, memory_format=torch.contiguous_format)

    _ext.register_not_differentiable(
        "wsss_fast::dense_crf", "detach the unaries (or run it under torch.no_grad()); dense_crf is inference only")


if _ext.has_op("dense_crf"):
    _register()
