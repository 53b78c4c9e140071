"""Boundary-aware path affinity of IRNet, with CPU and CUDA kernels.

The affinity of a pixel p and its neighbour p + (dy, dx) in a half disk of radius r is
``1 - max`` of the boundary map over the pixels on the line between them (IRNet's
"path"); a pair whose path leaves the image has affinity 0. The compiled op computes it
without materializing the path gathers, and its backward sends the gradient to the path
point that attains the max.

Reference:
    J. Ahn, S. Cho, S. Kwak. "Weakly Supervised Learning of Instance Segmentation
    with Inter-pixel Relations." CVPR 2019.
"""

from __future__ import annotations

import torch

from .. import _ext
from ..reference import path_affinity as _ref
from . import _utils

__all__ = ["search_offsets", "path_affinity", "irnet_affinity_layout"]

_HAS_OP = _ext.has_op("path_affinity")


def _check_aff(aff: torch.Tensor, radius: int) -> None:
    _utils.check_tensor("irnet_affinity_layout", "aff", aff, ndim=4, layout="[B, D, H, W]")
    d = len(_ref.offsets(radius))
    if aff.size(1) != d:
        raise ValueError(
            f"irnet_affinity_layout: aff must have D = {d} channels for radius {radius}, got {aff.size(1)}"
        )


def search_offsets(radius: int) -> torch.Tensor:
    """Half-disk search offsets of IRNet, in the channel order of :func:`path_affinity`.

    (0, x) for x = 1 .. r-1, then (y, x) for y = 1 .. r-1, x = -(r-1) .. r-1 with
    x^2 + y^2 < r^2.

    Args:
        radius: search radius r >= 1.

    Returns:
        LongTensor ``[D, 2]`` of (dy, dx); D = 34 for r = 5 and 152 for r = 10.

    Raises:
        TypeError, ValueError: radius is not an int >= 1.
    """
    radius = _utils.check_int("search_offsets", "radius", radius, 1)
    return _ref.search_offsets(radius)


def path_affinity(edge: torch.Tensor, radius: int) -> torch.Tensor:
    """Affinity of every pixel and its half-disk neighbours, from a boundary map.

    ``out[b, k, y, x] = 1 - max_{q on path k} edge[b, y + q_y, x + q_x]`` where path k
    joins (0, 0) and ``search_offsets(radius)[k]``; pixels outside the image count as 1,
    so pairs that leave the image have affinity 0. Differentiable with respect to
    ``edge``: the gradient of each output goes to the path point that attains the max
    (on ties, the first one in IRNet's path order, which starts at the destination and
    ends at the source; no gradient when that point lies outside the image).

    Args:
        edge: boundary map ``[B, H, W]`` or ``[B, 1, H, W]``, floating point
            (float32/float64 on CPU; float32/float16/bfloat16 on CUDA).
        radius: search radius r >= 1 (IRNet: 5 at inference, 10 in training).

    Returns:
        Tensor ``[B, D, H, W]`` in edge's dtype, D = ``len(search_offsets(radius))``
        (34 for r = 5, 152 for r = 10).

    Raises:
        TypeError: edge is not a floating-point tensor, or radius is not an int.
        ValueError: radius < 1 or edge has the wrong shape.
    """
    radius = _utils.check_int("path_affinity", "radius", radius, 1)
    _utils.check_edge("path_affinity", edge)
    if not _utils.use_kernel("path_affinity", _HAS_OP):
        return _ref.path_affinity(edge, radius)
    return torch.ops.wsss_fast.path_affinity(edge, radius)


def irnet_affinity_layout(aff: torch.Tensor, radius: int) -> torch.Tensor:
    """Crop and flatten an affinity map to IRNet's training layout.

    Keeps the sources in rows 0 .. H-r'-1 and columns r' .. W-r'-1 (r' = r - 1), whose
    neighbours all lie inside the image, and flattens them row-major.

    Args:
        aff: ``[B, D, H, W]`` from :func:`path_affinity`.
        radius: the radius that produced ``aff``.

    Returns:
        Tensor ``[B, D, (H - r') * (W - 2 r')]`` (empty when the map is too small).

    Raises:
        TypeError, ValueError: radius is not an int >= 1, or ``aff`` is not a 4-D tensor
            with ``len(search_offsets(radius))`` channels.
    """
    radius = _utils.check_int("irnet_affinity_layout", "radius", radius, 1)
    _check_aff(aff, radius)
    return _ref.irnet_affinity_layout(aff, radius)


def _fake(edge, radius):
    b, h, w = edge.shape[0], edge.shape[-2], edge.shape[-1]
    d = len(_ref.offsets(radius)) if radius >= 1 else 0
    return edge.new_empty(b, d, h, w)


def _backward_fake(grad, edge, radius):
    return torch.empty_like(edge, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    edge, radius = inputs
    ctx.save_for_backward(edge)
    ctx.radius = radius


def _backward(ctx, grad):
    (edge,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None
    return torch.ops.wsss_fast.path_affinity_backward(grad, edge, ctx.radius), None


if _HAS_OP:
    torch.library.register_fake("wsss_fast::path_affinity", _fake)
    torch.library.register_fake("wsss_fast::path_affinity_backward", _backward_fake)
    torch.library.register_autograd("wsss_fast::path_affinity", _backward, setup_context=_setup_context)
    _utils.register_not_differentiable(
        "wsss_fast::path_affinity_backward", "path_affinity has a first derivative only (no double backward)"
    )
