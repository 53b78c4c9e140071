"""Sparse random-walk propagation of IRNet, with CPU and CUDA kernels.

IRNet refines class activation maps with a random walk whose transition matrix comes
from boundary-aware affinities: ``x_0 = x * (1 - edge)`` and ``x_{k+1} = x_k T`` with
``T = A^beta`` column-normalized, A the symmetric path affinity over a disk of radius r
(with a unit diagonal). IRNet builds T densely, (HW)^2, and squares it; the compiled op
computes the (2D + 1)-point stencil weights once and runs each step as a sparse stencil,
several steps per CUDA launch, in O(B * H * W * (2D + 1)) memory.

Reference:
    J. Ahn, S. Cho, S. Kwak. "Weakly Supervised Learning of Instance Segmentation
    with Inter-pixel Relations." CVPR 2019.
"""

from __future__ import annotations

import torch

from .. import _ext
from ..reference import random_walk as _ref
from . import _utils

__all__ = ["random_walk"]

_HAS_OP = _ext.has_op("random_walk")


def _check(x: torch.Tensor, edge: torch.Tensor, radius: int, beta: float, steps: int) -> int:
    """Check the arguments of :func:`random_walk`; returns radius as an int."""
    radius = _utils.check_int("random_walk", "radius", radius, 1)
    _utils.check_tensor("random_walk", "x", x, ndim=4, layout="[B, C, H, W]", floating=True)
    e = _utils.check_edge("random_walk", edge)
    if e.shape != (x.size(0), x.size(2), x.size(3)):
        raise ValueError(
            f"random_walk: edge must have shape [B, H, W] = {[x.size(0), x.size(2), x.size(3)]} "
            f"(or [B, 1, H, W]) to match x {list(x.shape)}, got {list(edge.shape)}"
        )
    if e.device != x.device:
        raise ValueError(f"random_walk: x and edge must be on the same device, got {x.device} and {e.device}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"random_walk: steps must be an int >= 0, got {steps!r}")
    if not float(beta) > 0:
        raise ValueError(f"random_walk: beta must be > 0, got {beta!r}")
    return radius


def random_walk(
    x: torch.Tensor, edge: torch.Tensor, *, radius: int = 5, beta: float = 10.0, steps: int = 256,
    mask_edge: bool = True,
) -> torch.Tensor:
    """Propagate maps with IRNet's boundary-aware random walk.

    ``x_t[j] = sum_i x_{t-1}[i] A[i, j]^beta / sum_i A[i, j]^beta`` over the disk of
    radius r around j, starting from ``x_0 = x * (1 - edge)``. The same function as
    IRNet's ``propagate_to_edge(x, edge, radius, beta, exp_times=log2(steps))`` up to
    float rounding; any number of steps is allowed. Not differentiable: a backward
    through it raises.

    Args:
        x: maps to propagate ``[B, C, H, W]`` (e.g. CAMs; float32/float64 on CPU,
            float32/float16/bfloat16 on CUDA, accumulated in fp32 or better).
        edge: boundary map ``[B, H, W]`` or ``[B, 1, H, W]``; image b uses edge[b].
        radius: search radius r >= 1 (IRNet: 5).
        beta: exponent of the affinities, > 0 (IRNet: 10).
        steps: number of walk steps t >= 0 (IRNet: 2^8 = 256); 0 returns x * (1 - edge).
        mask_edge: start from ``x * (1 - edge)`` (IRNet) or, when False, from ``x``: the same
            transition, without removing the maps from the boundary pixels first (thin
            objects whose whole width the boundary map covers keep their maps).

    Returns:
        Tensor with x's shape and dtype.

    Raises:
        TypeError: x or edge is not a floating-point tensor.
        ValueError: bad radius, beta, steps or mask_edge, mismatched shapes or devices.
    """
    radius = _check(x, edge, radius, beta, steps)
    if not isinstance(mask_edge, bool):
        raise ValueError(f"random_walk: mask_edge must be a bool, got {mask_edge!r}")
    if not _utils.use_kernel("random_walk", _HAS_OP):
        return _ref.random_walk_sparse(x, edge, radius=radius, beta=beta, steps=steps, mask_edge=mask_edge)
    return torch.ops.wsss_fast.random_walk(x, edge, radius, float(beta), steps, mask_edge)


def _fake(x, edge, radius, beta, steps, mask_edge=True):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


if _HAS_OP:
    torch.library.register_fake("wsss_fast::random_walk", _fake)
    _utils.register_not_differentiable(
        "wsss_fast::random_walk", "detach x and edge (or run it under torch.no_grad()); the walk refines "
        "fixed maps and has no backward"
    )
