"""Pair (affinity) labels for IRNet training, from an IR label at stride 4.

Follows IRNet's ``GetAffinityLabelFromIndices`` and ``PathIndex`` (Ahn et al., CVPR 2019):
for radius r and r' = r - 1, the sources are the pixels in rows ``0 .. h - r' - 1`` and
columns ``r' .. w - r' - 1`` (row-major), and for every search offset (dy, dx) the
destination is source + (dy, dx). A pair is valid when both labels are not ignore (255);
it is bg-positive when both are 0, fg-positive when both are the same class > 0, and
negative when the labels differ. This is the layout of
:func:`wsss_fast.ops.irnet_affinity_layout`, with offsets in the order of
:func:`wsss_fast.ops.search_offsets`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

IGNORE = 255


def offsets_array(radius: int) -> np.ndarray:
    """``wsss_fast.ops.search_offsets(radius)`` as an int64 ``[D, 2]`` array of (dy, dx)."""
    from .. import ops

    return np.asarray(ops.search_offsets(radius).cpu().numpy(), dtype=np.int64)


def reduce_label(label: np.ndarray, stride: int = 4) -> np.ndarray:
    """Downsample a label map as IRNet does (``cv2.resize(fx=1/4, INTER_NEAREST)``): pixel
    ``(stride * i, stride * j)`` of the input, ``round(H / stride) x round(W / stride)`` of them."""
    h, w = int(round(label.shape[0] / stride)), int(round(label.shape[1] / stride))
    rows = np.minimum(np.arange(h) * stride, label.shape[0] - 1)
    cols = np.minimum(np.arange(w) * stride, label.shape[1] - 1)
    return label[rows][:, cols]


def pair_labels(label: np.ndarray | torch.Tensor, radius: int = 10,
                offsets: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bg-positive, fg-positive and negative pair labels of a stride-4 label map.

    Args:
        label: uint8/int ``[h, w]`` label map (0 bg, c + 1 class c, 255 ignore).
        radius: search radius r (IRNet trains with 10).
        offsets: ``[D, 2]`` (dy, dx) offsets; default ``search_offsets(radius)``.

    Returns:
        Three uint8 tensors ``[D, (h - r') * (w - 2 r')]`` (0/1), r' = r - 1. Empty in the
        second dimension when the map is smaller than the search window.
    """
    lab = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label)
    if lab.ndim != 2:
        raise ValueError(f"label must be [h, w], got shape {tuple(lab.shape)}")
    lab = lab.to(torch.int64)
    if offsets is None:
        offsets = offsets_array(radius)
    offsets = np.asarray(offsets, dtype=np.int64)
    rp = radius - 1
    h, w = lab.shape
    ch, cw = max(h - rp, 0), max(w - 2 * rp, 0)
    d = offsets.shape[0]
    if ch == 0 or cw == 0:
        empty = torch.zeros((d, 0), dtype=torch.uint8)
        return empty, empty.clone(), empty.clone()
    src = lab[:ch, rp:rp + cw]
    # every destination window at once through unfold-free strided views
    dst = torch.stack([lab[dy:dy + ch, rp + dx:rp + dx + cw] for dy, dx in offsets.tolist()], 0)
    src = src.unsqueeze(0)
    valid = (src != IGNORE) & (dst != IGNORE)
    equal = src == dst
    pos = equal & valid
    bg_pos = pos & (src == 0)
    fg_pos = pos & (src > 0)
    neg = (~equal) & valid
    flat = lambda t: t.reshape(d, -1).to(torch.uint8)  # noqa: E731
    return flat(bg_pos), flat(fg_pos), flat(neg)


def displacement_pairs(dp: torch.Tensor, radius: int) -> torch.Tensor:
    """IRNet's ``PathIndex.to_displacement``: source minus destination displacement.

    One gather of every pair's destination (:func:`_pair_index`, built once per size and
    device; ``torch.gather`` on the CPU, indexing elsewhere), not one slice per offset: on a
    GPU the loop's 2 x D slices (D = 152 at radius 10) and their backward pass cost more host
    time than the kernels take.

    Args:
        dp: ``[B, 2, h, w]`` displacement field (channel 0 = dy, 1 = dx).
        radius: search radius; offsets in the order of :func:`wsss_fast.ops.search_offsets`.

    Returns:
        ``[B, 2, D, (h - r') * (w - 2 r')]``.
    """
    return _displacement_pairs(dp, radius, gather=dp.device.type == "cpu")


def _displacement_pairs(dp: torch.Tensor, radius: int, gather: bool) -> torch.Tensor:
    """:func:`displacement_pairs` with the destinations taken by ``torch.gather`` (its backward, a
    scatter-add, runs in parallel on the CPU but adds with atomics on CUDA) or by indexing (its
    backward sorts the indices: the same gradients every run on CUDA, serial on the CPU)."""
    rp = radius - 1
    b, c, h, w = dp.shape
    ch, cw = h - rp, w - 2 * rp
    index = _pair_index(int(radius), h, w, dp.device)  # [D, N]
    src = dp[:, :, :ch, rp:rp + cw].reshape(b, c, 1, ch * cw)
    flat = dp.reshape(b, c, h * w)
    if gather:
        dst = torch.gather(flat, 2, index.reshape(1, 1, -1).expand(b, c, -1)).reshape(b, c, *index.shape)
    else:
        dst = flat[:, :, index]
    return src - dst


@functools.lru_cache(maxsize=32)
def _pair_index(radius: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Flat position in an ``h x w`` map of the destination of every pair: int64 ``[D, N]``,
    sources row-major (:func:`displacement_pairs`), on ``device``."""
    from .. import ops

    rp = radius - 1
    ys, xs = torch.arange(h - rp), torch.arange(rp, w - rp)
    src = (ys[:, None] * w + xs[None, :]).reshape(-1)
    off = ops.search_offsets(radius)
    return (src[None, :] + (off[:, 0] * w + off[:, 1])[:, None]).to(device)
