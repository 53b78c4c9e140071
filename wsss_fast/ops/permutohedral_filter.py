"""Gaussian filtering on the permutohedral lattice, with CPU and CUDA kernels.

``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` for every pixel (or point) i, computed with the
permutohedral lattice of Adams, Baek and Davis (Eurographics 2010) exactly as pydensecrf builds
and applies it (splat with barycentric weights, blur ``v + 0.5 (n1 + n2)`` along the d + 1 lattice
axes, slice times ``1 / (1 + 2^-d)``): the building block of dense CRF inference
(:func:`wsss_fast.ops.dense_crf`) and of CRF losses. Features are in units of the kernel's
standard deviation, e.g. ``(x / sxy, y / sxy, r / srgb, g / srgb, b / srgb)``.

Autograd: the filter is linear in the values; its adjoint is the same lattice with the blur
axes in reverse order (``transpose=True``; the permutohedral filter is symmetric only up to
that order), which is the backward. It is not differentiable with respect to the features:
a backward that needs their gradient raises.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _ext
from ..reference import permutohedral_filter as _ref
from . import _utils

__all__ = ["permutohedral_filter"]

_HAS_OP = _ext.has_op("permutohedral_filter")
MAX_DIM = _ref.MAX_DIM
_NO_FEATURE_GRAD = ("permutohedral_filter is not differentiable with respect to features; detach them "
                    "(the gradient flows to values only)")


def _check(values: Tensor, features: Tensor) -> None:
    """Check the arguments of :func:`permutohedral_filter`."""
    name = "permutohedral_filter"
    _utils.check_tensor(name, "values", values)
    _utils.check_tensor(name, "features", features)
    if values.dim() not in (3, 4):
        raise ValueError(f"{name}: values must be a 3-D [B, C, N] or 4-D [B, C, H, W] tensor, got shape "
                         f"{list(values.shape)}")
    if features.dim() != values.dim() or features.shape[0] != values.shape[0] or \
            features.shape[2:] != values.shape[2:]:
        raise ValueError(f"{name}: features {list(features.shape)} must match values {list(values.shape)} in "
                         "the layout, batch and spatial sizes")
    for label, t in (("values", values), ("features", features)):
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name}: {label} must be float32 or float64, got {t.dtype}")
    if values.device != features.device:
        raise ValueError(f"{name}: values and features must be on the same device, got {values.device} and "
                         f"{features.device}")
    if not 1 <= features.shape[1] <= MAX_DIM:
        raise ValueError(f"{name}: features must have 1 to {MAX_DIM} channels, got {features.shape[1]}")


def permutohedral_filter(values: Tensor, features: Tensor, *, transpose: bool = False) -> Tensor:
    """Filter values with the Gaussian kernel ``exp(-|f_i - f_j|^2 / 2)`` on the permutohedral lattice.

    Args:
        values: ``[B, C, H, W]`` or ``[B, C, N]``, float32 or float64 (the lattice weights are
            float32; the sums run in values' dtype).
        features: ``[B, D, H, W]`` or ``[B, D, N]`` (same layout as values), 1 <= D <= 16,
            float32 or float64 (rounded to float32 for the lattice), finite and not too large
            (``|f| <= 2^23 / (D + 1)^2``).
        transpose: apply the adjoint filter (blur axes in reverse order).

    Returns:
        Tensor with values' shape and dtype (contiguous).

    Raises:
        TypeError, ValueError: bad shapes, dtypes or devices.
        RuntimeError: from the backward, if the features' gradient is asked for.
    """
    _check(values, features)
    if not _utils.use_kernel("permutohedral_filter", _HAS_OP):
        if features.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(_NO_FEATURE_GRAD)
        return _ref.permutohedral_filter(values, features, transpose=transpose)
    return torch.ops.wsss_fast.permutohedral_filter(values, features, bool(transpose))


def _fake(values, features, transpose=False):
    return torch.empty_like(values, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    values, features, transpose = (tuple(inputs) + (False,))[:3]
    ctx.save_for_backward(features)
    ctx.transpose = bool(transpose)


def _backward(ctx, grad):
    if ctx.needs_input_grad[1]:
        raise RuntimeError(_NO_FEATURE_GRAD)
    (features,) = ctx.saved_tensors
    return torch.ops.wsss_fast.permutohedral_filter(grad.contiguous(), features, not ctx.transpose), None, None


if _HAS_OP:
    torch.library.register_fake("wsss_fast::permutohedral_filter", _fake)
    torch.library.register_autograd("wsss_fast::permutohedral_filter", _backward, setup_context=_setup_context)
