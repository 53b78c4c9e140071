"""Reference of the permutohedral-lattice Gaussian filter, in plain PyTorch.

The lattice of Adams, Baek and Davis ("Fast High-Dimensional Filtering Using the
Permutohedral Lattice", Eurographics 2010) as pydensecrf's ``permutohedral.cpp`` builds it,
vectorized over the pixels: elevation, rounding to the nearest 0-coloured point, ranks,
barycentric weights (float32 operations in pydensecrf's order, so the lattice is the same),
vertices by ``torch.unique``, splat by ``index_add``, blur ``v + 0.5 (n1 + n2)`` along each of
the d + 1 axes, slice times ``alpha = 1 / (1 + 2^-d)``. Slow but exact; the lattice is built
without gradient (the filter is differentiable in the values only).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["permutohedral_filter", "lattice", "MAX_DIM"]

MAX_DIM = 16


def _dims(values: torch.Tensor, features: torch.Tensor) -> tuple[int, int, int, int]:
    """(B, C, D, N) of checked arguments (see :func:`wsss_fast.ops.permutohedral_filter`)."""
    b, c = values.shape[:2]
    return b, c, features.shape[1], math.prod(values.shape[2:])


def _consts(d: int):
    inv_std = np.float32(math.sqrt(2.0 / 3.0) * (d + 1))
    scale = [np.float32(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std)) for i in range(d)]
    alpha = np.float32(1.0) / (np.float32(1.0) + np.float32(2.0 ** -d))
    return scale, np.float32(1.0) / np.float32(d + 1), np.float32(d + 1), alpha


@torch.no_grad()
def lattice(features: torch.Tensor):
    """The lattice of one image's points.

    Args:
        features: ``[d, N]`` float32.

    Returns:
        ``(vid [N, d+1] int64, bary [N, d+1] float32, nbr [d+1, 2, M] int64 (-1: none), M)``:
        vertex of each point and remainder, its barycentric weight, the two blur neighbours
        of every vertex along every axis, and the number of vertices.
    """
    f = features.to(torch.float32)
    d, n = f.shape
    dev = f.device
    scale, inv_dp1, dp1, _ = _consts(d)
    t = lambda x: torch.tensor(float(x), dtype=torch.float32, device=dev)  # noqa: E731
    el = torch.empty(d + 1, n, dtype=torch.float32, device=dev)
    sm = torch.zeros(n, dtype=torch.float32, device=dev)
    for j in range(d, 0, -1):
        cf = f[j - 1] * t(scale[j - 1])
        el[j] = sm - t(j) * cf
        sm = sm + cf
    el[0] = sm
    v = torch.round(t(inv_dp1) * el)  # round half to even, as SSE rounding
    rem0 = v * t(dp1)
    s = v.sum(0).to(torch.int64)
    di = el - rem0
    lt = (di[:, None, :] < di[None, :, :]).to(torch.int64)  # lt[i, j] = di_i < di_j
    upper = torch.triu(torch.ones(d + 1, d + 1, dtype=torch.int64, device=dev), 1)[:, :, None]
    rank = (lt * upper).sum(1) + ((1 - lt) * upper).sum(0) + s
    lo, hi = rank < 0, rank > d
    rank = rank + (d + 1) * lo - (d + 1) * hi
    rem0 = rem0 + t(dp1) * lo - t(dp1) * hi
    vb = (el - rem0) * t(inv_dp1)
    b = torch.zeros(d + 2, n, dtype=torch.float32, device=dev)
    for i in range(d + 1):  # one value per column at a time: the float sums in pydensecrf's order
        b.scatter_add_(0, (d - rank[i])[None], vb[i][None])
        b.scatter_add_(0, (d - rank[i] + 1)[None], -vb[i][None])
    b[0] = b[0] + (t(1.0) + b[d + 1])
    bary = b[: d + 1].t().contiguous()
    r = torch.arange(d + 1, device=dev)[:, None, None]  # remainder
    rk = rank[None, :d, :]  # [1, d, N]
    keys = rem0[None, :d, :].to(torch.int64) + torch.where(rk <= d - r, r, r - (d + 1))  # [d+1, d, N]
    keys = keys.permute(2, 0, 1).reshape(n * (d + 1), d)
    uniq, vid = torch.unique(keys, dim=0, return_inverse=True)
    m = uniq.shape[0]
    nbr = torch.full((d + 1, 2, m), -1, dtype=torch.int64, device=dev)
    for j in range(d + 1):
        n1, n2 = uniq - 1, uniq + 1
        if j < d:
            n1[:, j] = uniq[:, j] + d
            n2[:, j] = uniq[:, j] - d
        allk, inv = torch.unique(torch.cat([uniq, n1, n2]), dim=0, return_inverse=True)
        of = torch.full((allk.shape[0],), -1, dtype=torch.int64, device=dev)
        of[inv[:m]] = torch.arange(m, device=dev)
        nbr[j, 0] = of[inv[m:2 * m]]
        nbr[j, 1] = of[inv[2 * m:]]
    return vid.reshape(n, d + 1), bary, nbr, m


def _filter_one(v: torch.Tensor, f: torch.Tensor, transpose: bool) -> torch.Tensor:
    """``v`` [C, N] filtered on the lattice of ``f`` [d, N]."""
    d = f.shape[0]
    vid, bary, nbr, m = lattice(f)
    alpha = float(_consts(d)[3])
    w = bary.to(v.dtype)  # [N, d+1]
    vals = v.t()  # [N, C]
    lat = torch.zeros(m + 1, v.shape[0], dtype=v.dtype, device=v.device)  # row m: the missing neighbour
    lat = lat.index_add(0, vid.reshape(-1), (w[:, :, None] * vals[:, None, :]).reshape(-1, v.shape[0]))
    for j in (range(d, -1, -1) if transpose else range(d + 1)):
        n1 = torch.where(nbr[j, 0] < 0, m, nbr[j, 0])
        n2 = torch.where(nbr[j, 1] < 0, m, nbr[j, 1])
        new = lat.clone()
        new[:m] = lat[:m] + 0.5 * (lat[n1] + lat[n2])
        lat = new
    out = (w[:, :, None] * alpha * lat[vid]).sum(1)  # [N, C]
    return out.t()


def permutohedral_filter(values: torch.Tensor, features: torch.Tensor, *, transpose: bool = False) -> torch.Tensor:
    """``out_i = sum_j k(f_i, f_j) v_j`` with the permutohedral approximation of
    ``k = exp(-|f_i - f_j|^2 / 2)`` (see :func:`wsss_fast.ops.permutohedral_filter`).

    Args:
        values: ``[B, C, H, W]`` or ``[B, C, N]`` float32/float64.
        features: ``[B, D, H, W]`` or ``[B, D, N]`` (rounded to float32 for the lattice).
        transpose: apply the adjoint (the blur in reverse axis order).

    Returns:
        Tensor with values' shape and dtype.
    """
    b, c, d, n = _dims(values, features)
    v = values.reshape(b, c, n)
    f = features.reshape(b, d, n)
    out = [_filter_one(v[i], f[i], transpose) for i in range(b)]
    if not out:
        return torch.zeros_like(values)
    return torch.stack(out).reshape(values.shape)
