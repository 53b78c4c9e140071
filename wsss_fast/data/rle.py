"""Run-length code of the SIIM-ACR Pneumothorax Segmentation competition.

The competition's ``mask_functions.py`` stores a binary mask of a ``H x W`` image as
pairs ``(relative start, length)`` over the **column-major** (Fortran-order) flattening
of the mask: the first start is an offset from pixel 0; each later start is the offset
from the end of the previous run. ``-1`` stands for an empty mask. A positive image has one
CSV row per region, and the regions' union is the image's mask.

Reference: SIIM-ACR Pneumothorax Segmentation (Kaggle, 2019), ``mask_functions.py``
(``mask2rle`` / ``rle2mask``); used by Viniavskyi et al., AIME 2020.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = ["RLEError", "parse_rle", "rle_decode", "rle_encode", "rle_decode_union",
           "rle_encode_regions", "is_empty_rle"]

EMPTY = "-1"


class RLEError(ValueError):
    """A malformed run-length string (the message says why)."""


def is_empty_rle(rle: str | None) -> bool:
    """True for the competition's "no pneumothorax" marker (``-1``) and for empty strings."""
    if rle is None:
        return True
    s = str(rle).strip()
    return s in ("", EMPTY) or s.lower() == "nan"


def parse_rle(rle: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse a run-length string into absolute run starts and lengths.

    Args:
        rle: ``"s0 l0 s1 l1 ..."`` with relative starts (competition convention), or ``-1``.
        size: number of pixels ``H * W``; when given, runs must end inside the image.

    Returns:
        ``(starts, lengths)``: int64 arrays [R] of absolute flat (column-major) offsets.

    Raises:
        RLEError: odd number of values, a non-integer, a negative start, a non-positive
            length, or a run past the end of the image.
    """
    if is_empty_rle(rle):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tokens = str(rle).split()
    try:
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError as exc:
        raise RLEError(f"run-length string has a non-integer value ({exc})") from None
    if values.size % 2:
        raise RLEError(f"run-length string has an odd number of values ({values.size})")
    rel, lengths = values[0::2], values[1::2]
    if (rel < 0).any():
        raise RLEError(f"negative relative start {int(rel[rel < 0][0])}")
    if (lengths <= 0).any():
        raise RLEError(f"non-positive run length {int(lengths[lengths <= 0][0])}")
    ends_prev = np.concatenate([[0], np.cumsum(rel + lengths)[:-1]])
    starts = ends_prev + rel
    if size is not None and starts.size and int(starts[-1] + lengths[-1]) > size:
        raise RLEError(f"runs end at pixel {int(starts[-1] + lengths[-1])}, past the image's "
                       f"{size} pixels (mask size does not match the image)")
    return starts, lengths


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode one run-length string.

    Args:
        rle: the competition's code (relative starts, column-major), or ``-1``.
        height, width: image size.

    Returns:
        uint8 [height, width] mask with values 0/1.
    """
    flat = np.zeros(height * width, dtype=np.uint8)
    starts, lengths = parse_rle(rle, height * width)
    for s, n in zip(starts.tolist(), lengths.tolist()):
        flat[s:s + n] = 1
    # column-major: the flat index is x * height + y
    return flat.reshape(width, height).T.copy()


def rle_decode_union(rles: Iterable[str], height: int, width: int) -> np.ndarray:
    """Union of several regions' codes (one CSV row per region); ``-1`` rows add nothing."""
    out = np.zeros((height, width), dtype=np.uint8)
    for r in rles:
        if not is_empty_rle(r):
            out |= rle_decode(r, height, width)
    return out


def rle_encode(mask: np.ndarray) -> str:
    """Encode a binary mask [H, W] as the competition does (``-1`` when empty).

    Args:
        mask: [H, W] array; nonzero pixels are foreground.

    Returns:
        ``"s0 l0 s1 l1 ..."`` with starts relative to the end of the previous run.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    flat = (mask != 0).T.reshape(-1).astype(np.int8)  # column-major
    if not flat.any():
        return EMPTY
    diff = np.diff(np.concatenate([[0], flat, [0]]))
    starts = np.flatnonzero(diff == 1)
    ends = np.flatnonzero(diff == -1)
    lengths = ends - starts
    prev_end = np.concatenate([[0], ends[:-1]])
    rel = starts - prev_end
    return " ".join(f"{int(a)} {int(b)}" for a, b in zip(rel, lengths))


def rle_encode_regions(mask: np.ndarray, connectivity: int = 2) -> list[str]:
    """Encode each connected region of a mask separately (one CSV row per region).

    Args:
        mask: [H, W] binary mask.
        connectivity: 1 (4-neighbourhood) or 2 (8-neighbourhood).

    Returns:
        One code per region, ordered by the region's first column-major pixel; ``["-1"]``
        for an empty mask.
    """
    from scipy import ndimage

    mask = np.asarray(mask) != 0
    if not mask.any():
        return [EMPTY]
    structure = ndimage.generate_binary_structure(2, connectivity)
    labels, n = ndimage.label(mask, structure=structure)
    flat = labels.T.reshape(-1)
    order: Sequence[int] = [int(v) for v in dict.fromkeys(flat[flat > 0].tolist())]
    return [rle_encode(labels == k) for k in order]
