"""Small helpers shared by the IRNet step: resizing, dataset access, list-valued config keys."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from ..engine.paths import RunPaths


def resize_image_uint8(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``[H, W(, C)]`` uint8 image to ``size = (H', W')`` (bilinear); no-op when equal."""
    if tuple(img.shape[:2]) == tuple(size):
        return img
    squeeze = img.ndim == 3 and img.shape[2] == 1
    pil = Image.fromarray(img[..., 0] if squeeze else img)
    out = np.asarray(pil.resize((int(size[1]), int(size[0])), Image.BILINEAR))
    return out[..., None] if squeeze else out


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 label map with nearest neighbour; no-op when equal."""
    if tuple(label.shape[:2]) == tuple(size):
        return label
    return np.asarray(Image.fromarray(label).resize((int(size[1]), int(size[0])), Image.NEAREST))


def build_split(cfg: dict, split: str, paths: RunPaths, train: bool = False):
    """``wsss_fast.data.build_dataset`` (imported lazily)."""
    from ..data import build_dataset

    return build_dataset(cfg, split, paths, train=train)


def as_list(value: str | Sequence[str] | None) -> list[str]:
    """A config value that may be null, a string or a list, as a list (null: empty)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)
