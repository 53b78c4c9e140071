"""IRNet-literal reference of boundary-aware path affinity.

Follows ``misc/indexing.py`` of IRNet (``PathIndex`` and ``edge_to_affinity``):
path indices are built per offset, grouped by path length, gathered from the
flattened edge map with ``index_select`` and reduced with a max over the path.

Reference:
    J. Ahn, S. Cho, S. Kwak. "Weakly Supervised Learning of Instance Segmentation
    with Inter-pixel Relations." CVPR 2019.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["offsets", "search_offsets", "path_affinity", "irnet_affinity_layout"]


@functools.lru_cache(maxsize=64)
def offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """Half-disk search offsets (dy, dx) of radius ``radius`` in IRNet's search order."""
    dirs = [(0, x) for x in range(1, radius)]
    for y in range(1, radius):
        for x in range(-radius + 1, radius):
            if x * x + y * y < radius * radius:
                dirs.append((y, x))
    return tuple(dirs)


@functools.lru_cache(maxsize=64)
def _paths(radius: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Path points of every offset, in IRNet's order (farthest from the source first).

    A point (y, x) of the bounding box of (0, 0) and (dy, dx) is on the path when
    ``(dy*x - dx*y)^2 / (dy^2 + dx^2) < 1``. The sort is stable, as Python's.
    """
    out = []
    for dy, dx in offsets(radius):
        length_sq = dy * dy + dx * dx
        pts = []
        for y in range(min(0, dy), max(0, dy) + 1):
            for x in range(min(0, dx), max(0, dx) + 1):
                if (dy * x - dx * y) ** 2 < length_sq:  # same as dist_sq < 1, in integers
                    pts.append((y, x))
        pts.sort(key=lambda p: -abs(p[0]) - abs(p[1]))
        out.append(tuple(pts))
    return tuple(out)


def search_offsets(radius: int) -> torch.Tensor:
    """:func:`offsets` as a LongTensor ``[D, 2]`` (see :func:`wsss_fast.ops.search_offsets`)."""
    offs = offsets(radius)
    if not offs:
        return torch.zeros(0, 2, dtype=torch.long)
    return torch.tensor(offs, dtype=torch.long)


def grouped_path_indices(radius: int, height: int, width: int):
    """``PathIndex.get_path_indices`` for a map padded by r' = r - 1 (left, right, bottom).

    Returns:
        (groups, channels): ``groups[g]`` is a LongTensor ``[n_paths, length, H*W]`` of
        indices into the flattened padded map, for the sources that are the original
        pixels; ``channels[g]`` lists the search-order channel of each path.
    """
    rf = radius - 1
    pw = width + 2 * rf
    by_length: dict[int, list[int]] = {}
    for k, pts in enumerate(_paths(radius)):
        by_length.setdefault(len(pts), []).append(k)
    ys = torch.arange(height).view(-1, 1)
    xs = torch.arange(width).view(1, -1)
    src = (ys * pw + xs + rf).reshape(-1)
    paths = _paths(radius)
    groups, channels = [], []
    for length in sorted(by_length):
        ks = by_length[length]
        ind = torch.empty(len(ks), length, height * width, dtype=torch.long)
        for i, k in enumerate(ks):
            for j, (dy, dx) in enumerate(paths[k]):
                ind[i, j] = src + dy * pw + dx
        groups.append(ind)
        channels.append(ks)
    return groups, channels


def as_bhw(edge: torch.Tensor) -> torch.Tensor:
    """A ``[B, H, W]`` view of a boundary map given as ``[B, H, W]`` or ``[B, 1, H, W]``."""
    return edge[:, 0] if edge.dim() == 4 else edge


def path_affinity(edge: torch.Tensor, radius: int) -> torch.Tensor:
    """Affinity of every pixel and its half-disk neighbours (IRNet-literal reference).

    ``out[b, k, y, x] = 1 - max_{q on path k} edge[b, y + q_y, x + q_x]``, with the edge
    map padded with 1, so a pair whose path leaves the image has affinity 0.

    Args:
        edge: boundary map ``[B, H, W]`` or ``[B, 1, H, W]``, floating point.
        radius: search radius r >= 1.

    Returns:
        Tensor ``[B, D, H, W]`` with D = ``len(search_offsets(radius))``, edge's dtype.
    """
    e = as_bhw(edge)
    b, h, w = e.shape
    d = len(offsets(radius))
    if d == 0 or b == 0 or h == 0 or w == 0:  # empty output, still part of the autograd graph
        return e[:, None].expand(b, d, h, w).clone()
    rf = radius - 1
    padded = torch.nn.functional.pad(e, (rf, rf, 0, rf), mode="constant", value=1.0)
    flat = padded.reshape(b, -1)
    groups, channels = grouped_path_indices(radius, h, w)
    aff_list = []
    for ind in groups:
        ind = ind.to(flat.device)
        dist = torch.index_select(flat, -1, ind.view(-1)).view(b, ind.size(0), ind.size(1), ind.size(2))
        aff_list.append(1 - dist.max(dim=2).values)
    aff_cat = torch.cat(aff_list, dim=1)  # IRNet's channel order (grouped by path length)
    order = [k for ks in channels for k in ks]
    inverse = torch.empty(d, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(d)
    return aff_cat[:, inverse.to(aff_cat.device)].view(b, d, h, w)


def irnet_affinity_layout(aff: torch.Tensor, radius: int) -> torch.Tensor:
    """Crop ``aff [B, D, H, W]`` to IRNet's training layout ``[B, D, (H - r') * (W - 2 r')]``.

    See :func:`wsss_fast.ops.irnet_affinity_layout`; ``r' = radius - 1``.
    """
    d = len(offsets(radius))
    rf = radius - 1
    b, _, h, w = aff.shape
    ch, cw = max(h - rf, 0), max(w - 2 * rf, 0)
    return aff[:, :, :ch, rf:rf + cw].reshape(b, d, ch * cw)
