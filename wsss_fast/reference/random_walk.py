"""References of IRNet's random walk (``propagate_to_edge`` of ``misc/indexing.py``).

:func:`random_walk` follows IRNet's code literally: path affinity on the padded edge map,
sparse to dense with the transposed pairs and a unit diagonal, ``A ** beta``, column
normalization, and powers of the dense transition matrix by repeated squaring. Its memory
is O((HW)^2) per image: use it on small maps only.

:func:`random_walk_sparse` is the best a user could do without kernels: the same walk as
a stencil over the (2D + 1)-point disk, one shifted multiply-add per neighbour and step.

Reference:
    J. Ahn, S. Cho, S. Kwak. "Weakly Supervised Learning of Instance Segmentation
    with Inter-pixel Relations." CVPR 2019.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .path_affinity import as_bhw, grouped_path_indices, offsets, path_affinity

__all__ = ["random_walk", "random_walk_sparse"]


def _dense_transition(edge_hw: torch.Tensor, radius: int, beta: float) -> torch.Tensor:
    """IRNet's transition matrix T [HW, HW] of one image (columns sum to 1)."""
    h, w = edge_hw.shape
    # IRNet pads right/left/bottom by `radius`; we pad by r' = r - 1, which gives the same
    # pairs inside the image (the padded part is cropped away below, as IRNet does).
    rf = radius - 1
    ph, pw = h + rf, w + 2 * rf
    n = ph * pw
    groups, channels = grouped_path_indices(radius, h, w)
    padded = F.pad(edge_hw[None], (rf, rf, 0, rf), mode="constant", value=1.0).reshape(1, -1)
    aff_list = []
    dst_list = []
    for ind in groups:
        ind = ind.to(padded.device)
        dist = torch.index_select(padded, -1, ind.view(-1)).view(1, ind.size(0), ind.size(1), ind.size(2))
        aff_list.append(1 - dist.max(dim=2).values)
        dst_list.append(ind[:, 0])  # the first path point is the destination
    ys = torch.arange(h, device=padded.device).view(-1, 1)
    xs = torch.arange(w, device=padded.device).view(1, -1)
    src = (ys * pw + xs + rf).reshape(-1)
    if aff_list:
        aff = torch.cat(aff_list, dim=1).reshape(-1)
        ind_to = torch.cat(dst_list, dim=0).reshape(-1)
        ind_from = src.repeat(ind_to.numel() // src.numel())
    else:
        aff = padded.new_zeros(0)
        ind_to = ind_from = src.new_zeros(0)
    ids = torch.arange(n, device=padded.device)
    indices = torch.cat(
        [torch.stack([ind_from, ind_to]), torch.stack([ids, ids]), torch.stack([ind_to, ind_from])], dim=1
    )
    values = torch.cat([aff, padded.new_ones(n), aff])
    dense = torch.sparse_coo_tensor(indices, values, (n, n), check_invariants=False).to_dense()
    dense = dense.view(ph, pw, ph, pw)[:h, rf:rf + w, :h, rf:rf + w].reshape(h * w, h * w)
    scaled = torch.pow(dense, beta)
    return scaled / torch.sum(scaled, dim=0, keepdim=True)


def random_walk(
    x: torch.Tensor, edge: torch.Tensor, *, radius: int = 5, beta: float = 10.0, steps: int = 256,
    mask_edge: bool = True,
) -> torch.Tensor:
    """Dense IRNet-literal random walk: ``x_t = (x * (1 - edge)) @ T^t`` per image.

    ``T^t`` is computed by binary exponentiation of the dense transition matrix, so for
    ``steps = 2^k`` it is exactly IRNet's k repeated squarings, and any other number of
    steps is exact too.

    Args:
        x: maps to propagate ``[B, C, H, W]``.
        edge: boundary map ``[B, H, W]`` or ``[B, 1, H, W]``.
        radius: search radius r >= 1.
        beta: exponent of the affinities (> 0).
        steps: number of walk steps t >= 0.
        mask_edge: start from ``x * (1 - edge)`` (IRNet) or, when False, from ``x``.

    Returns:
        Tensor with x's shape and dtype.
    """
    e = as_bhw(edge)
    b, c, h, w = x.shape
    x0 = x * (1 - e[:, None].to(x.dtype)) if mask_edge else x.clone()
    if steps == 0 or x.numel() == 0:
        return x0
    out = []
    for i in range(b):
        trans = _dense_transition(e[i].to(x.dtype), radius, float(beta))
        v = x0[i].reshape(c, h * w)
        power = trans
        t = steps
        while True:
            if t & 1:
                v = torch.matmul(v, power)
            t >>= 1
            if not t:
                break
            power = torch.matmul(power, power)
        out.append(v.view(c, h, w))
    return torch.stack(out, 0)


def _stencil_weights(e: torch.Tensor, radius: int, beta: float) -> tuple[torch.Tensor, list]:
    """Normalized (2D + 1)-point weights ``[B, 2D+1, H, W]`` and their (dy, dx) offsets.

    The weight of offset o at pixel j is ``A[j+o, j]^beta / sum_i A[i, j]^beta``.
    """
    b, h, w = e.shape
    offs = list(offsets(radius))
    aff = path_affinity(e, radius).pow(beta)  # [B, D, H, W]: pair (p, p + d)
    rf = radius - 1
    # transposed pairs: the weight of (j - d -> j) is aff[d] at source j - d.
    padded = F.pad(aff, (rf, rf, rf, rf))
    back = [padded[:, k, rf - dy:rf - dy + h, rf - dx:rf - dx + w] for k, (dy, dx) in enumerate(offs)]
    parts = [e.new_ones(b, 1, h, w)]
    if offs:
        parts += [aff, torch.stack(back, 1)]
    weights = torch.cat(parts, 1)
    weights = weights / weights.sum(1, keepdim=True)
    stencil = [(0, 0)] + offs + [(-dy, -dx) for dy, dx in offs]
    return weights, stencil


def random_walk_sparse(
    x: torch.Tensor, edge: torch.Tensor, *, radius: int = 5, beta: float = 10.0, steps: int = 256,
    mask_edge: bool = True,
) -> torch.Tensor:
    """The same walk as :func:`random_walk`, as a pure-PyTorch sparse stencil.

    Weights are computed once; each step is one shifted multiply-add per disk point:
    ``x_{k+1}[j] = sum_o x_k[j + o] * w(o, j)``. Memory O(B * H * W * (2D + 1)).

    Args and returns as :func:`random_walk`.
    """
    e = as_bhw(edge)
    b, c, h, w = x.shape
    x0 = x * (1 - e[:, None].to(x.dtype)) if mask_edge else x.clone()
    if steps == 0 or x.numel() == 0:
        return x0
    weights, stencil = _stencil_weights(e.to(x.dtype), radius, float(beta))
    weights = weights[:, :, None]  # [B, K, 1, H, W]
    rf = radius - 1
    cur = F.pad(x0, (rf, rf, rf, rf))
    nxt = torch.zeros_like(cur)
    inner = nxt[..., rf:rf + h, rf:rf + w]
    for _ in range(steps):
        inner.zero_()
        for k, (dy, dx) in enumerate(stencil):
            inner.addcmul_(cur[..., rf + dy:rf + dy + h, rf + dx:rf + dx + w], weights[:, k])
        cur, nxt = nxt, cur
        inner = nxt[..., rf:rf + h, rf:rf + w]
    return cur[..., rf:rf + h, rf:rf + w].clone()
