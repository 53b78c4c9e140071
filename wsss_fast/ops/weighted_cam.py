"""Fused class activation maps ``relu(sum_k w[b, c, k] * A[b, k])``.

Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016 (CAM);
Selvaraju et al., "Grad-CAM", ICCV 2017; Chattopadhay et al., "Grad-CAM++", WACV 2018.

The weighted sum and the ReLU are one kernel (no ``[B, C, K, h, w]`` intermediate, as
pytorch-grad-cam builds on the host). The optional bilinear upsampling
(``align_corners=False``, ATen's formula) and the per-map min-max normalization
``(m - min) / (max - min + 1e-7)`` (pytorch-grad-cam's ``scale_cam_image``) follow on the same
device: on CUDA fused in two more kernels (min/max of the interpolated map, then one write of
the normalized full-size map), on the CPU through ATen; nothing is copied to the host.

Autograd: the op is differentiable w.r.t. ``activations`` and ``weights`` through a
closed-form backward (two batched matmuls through the ReLU mask, preceded by the
backward of the upsampling and of the normalization; min/max gradients are split evenly
between ties, as ``torch.amin``/``torch.amax`` do).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .. import _ext
from ..reference import weighted_cam as _ref
from . import _utils

__all__ = ["weighted_cam", "NORMALIZE_EPS"]

_HAS_OP = _ext.has_op("weighted_cam")
NORMALIZE_EPS = _ref.NORMALIZE_EPS


def _check(activations: Tensor, weights: Tensor, out_size) -> list[int] | None:
    _utils.check_maps_and("weighted_cam", activations, weights, "weights", "[B, C, K]")
    if out_size is None:
        return None
    size = list(out_size) if isinstance(out_size, (list, tuple, torch.Size)) else None
    if size is None or len(size) != 2 or any(int(s) <= 0 for s in size):
        raise ValueError(f"weighted_cam: out_size must be None or two positive ints (H, W), got {out_size!r}")
    if activations.shape[2] == 0 or activations.shape[3] == 0:
        raise ValueError(
            f"weighted_cam: cannot upsample empty maps of shape {list(activations.shape)} to {size}"
        )
    return [int(s) for s in size]


def weighted_cam(
    activations: Tensor,
    weights: Tensor,
    *,
    out_size: Sequence[int] | None = None,
    normalize: bool = True,
) -> Tensor:
    """Class activation maps from channel weights, fused and on-device.

    Args:
        activations: ``[B, K, h, w]`` feature maps A.
        weights: ``[B, C, K]`` channel weights of C maps per image (CAM: the classifier rows;
            Grad-CAM: mean gradients; Grad-CAM++: :func:`gradcampp_weights`).
        out_size: ``(H, W)``: bilinear upsampling (``align_corners=False``) of each map.
        normalize: min-max normalize each map to [0, 1]: ``(m - min) / (max - min + 1e-7)``.

    Returns:
        ``[B, C, H, W]`` (``[B, C, h, w]`` when ``out_size`` is None), inputs' dtype,
        accumulated in fp32.

    Raises:
        TypeError, ValueError, RuntimeError: on bad shapes, dtypes, devices or out_size.
    """
    size = _check(activations, weights, out_size)
    if not _utils.use_kernel("weighted_cam", _HAS_OP):
        return _ref.weighted_cam(activations, weights, out_size=size, normalize=normalize)
    return torch.ops.wsss_fast.weighted_cam(activations, weights, size, bool(normalize))


def _fake(activations, weights, out_size=None, normalize=True):
    if out_size is None:
        h, w = activations.shape[2], activations.shape[3]
    else:
        h, w = out_size
    return activations.new_empty((activations.shape[0], weights.shape[1], h, w))


def _interp_matrix(n: int, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[n, size]`` weights of 1-D linear upsampling (``align_corners=False``) of length n to size."""
    eye = torch.eye(n, dtype=dtype, device=device)[None]
    return torch.nn.functional.interpolate(eye, size=size, mode="linear", align_corners=False)[0]


def _backward_formula(a: Tensor, w: Tensor, grad: Tensor, out_size, normalize: bool) -> tuple[Tensor, Tensor]:
    """Gradients ``([B, K, h, w], [B, C, K])`` of the maps w.r.t. (activations, weights), in
    closed form, from the gradient ``grad [B, C, H, W]`` of the maps."""
    acc = torch.promote_types(a.dtype, torch.float32)
    a32, w32, g = a.to(acc), w.to(acc), grad.to(acc)
    b, k, h, wd = a.shape
    c = w.shape[1]
    if b * c * h * wd == 0:
        return torch.zeros_like(a32), torch.zeros_like(w32)
    pre = torch.matmul(w32, a32.reshape(b, k, h * wd)).reshape(b, c, h, wd)
    u = torch.relu(pre)
    if out_size is not None:
        u = torch.nn.functional.interpolate(u, size=tuple(out_size), mode="bilinear", align_corners=False)
    if normalize and u.numel() > 0:
        mn = u.amin(dim=(-2, -1), keepdim=True)
        mx = u.amax(dim=(-2, -1), keepdim=True)
        d = mx - mn + NORMALIZE_EPS
        r = (u - mn) / (d * d)
        g_mn = (g * (r - 1.0 / d)).sum(dim=(-2, -1), keepdim=True)
        g_mx = -(g * r).sum(dim=(-2, -1), keepdim=True)
        at_mn = (u == mn).to(acc)
        at_mx = (u == mx).to(acc)
        g = (
            g / d
            + g_mn * at_mn / at_mn.sum(dim=(-2, -1), keepdim=True)
            + g_mx * at_mx / at_mx.sum(dim=(-2, -1), keepdim=True)
        )
    if out_size is not None:  # adjoint of the separable bilinear upsampling
        rh = _interp_matrix(h, out_size[0], acc, a.device)  # [h, H]
        rw = _interp_matrix(wd, out_size[1], acc, a.device)  # [w, W]
        g = torch.matmul(torch.matmul(rh, g), rw.transpose(0, 1))
    g = g * (pre > 0).to(acc)
    g = g.reshape(b, c, h * wd)
    grad_w = torch.matmul(g, a32.reshape(b, k, h * wd).transpose(1, 2))
    grad_a = torch.matmul(w32.transpose(1, 2), g).reshape(b, k, h, wd)
    return grad_a, grad_w


if _HAS_OP:
    torch.library.register_fake("wsss_fast::weighted_cam", _fake)
    _utils.register_closed_form_autograd("wsss_fast::weighted_cam", _backward_formula)
