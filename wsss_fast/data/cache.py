"""A decoded-image cache at the working resolution (``dataset.cache``).

Decoding a 1024-px SIIM DICOM (JPEG inside) and resizing it to ``dataset.image_size`` costs
more than a training step's share of the GPU, and every step and every epoch did it again.
The cache stores each image once, already decoded and resized, as
``<cache folder>/<image_id>.npz`` (uncompressed: ``image`` uint8 [S, S] or [S, S, 3] and
``orig_size`` (H0, W0)), written atomically (:func:`wsss_fast.engine.files.atomic_write_bytes`),
so a crash leaves whole files only and a later run (or another step, or another DataLoader
worker) reuses them. The cache folder name holds the working size and a hash of the source
folder: two data sets or two sizes never share files.

The resize is the one the transforms do (``torchvision.transforms.v2`` bilinear, antialias, on
uint8): a cached image goes through ``Resize`` unchanged, so the transformed tensors are the
same with and without the cache.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..engine.files import atomic_write_bytes

__all__ = ["cache_folder", "resize_uint8", "read_cached", "write_cached"]


def cache_folder(setting: str | bool | None, run_root: str | Path | None, dataset: str, source: str | Path,
                 size: int | None) -> Path | None:
    """Where a data set's cached images live, or None when caching is off.

    Args:
        setting: ``dataset.cache``: ``auto`` (``<run>/cache``), a folder, or null / false (off).
        run_root: the run folder (None: ``auto`` is off).
        dataset: the data set's name (``siim``).
        source: the folder the images come from (hashed into the name).
        size: the working resolution (``dataset.image_size``); None = original size.

    Returns:
        ``<base>/<dataset>_<size>px_<hash of source>``, or None.
    """
    if setting is None or setting is False or str(setting).lower() in ("none", "false", "off", ""):
        return None
    if str(setting).lower() == "auto":
        if run_root is None:
            return None
        base = Path(run_root) / "cache"
    else:
        base = Path(str(setting))
    key = hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:10]
    return base / f"{dataset}_{'orig' if size is None else f'{int(size)}px'}_{key}"


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 [H, W] or [H, W, 3] to [size, size] as ``eval_transform`` does (bilinear,
    antialias, uint8 kernel; a grey image is resized as its 3-channel stack)."""
    from torchvision.transforms.v2 import functional as TF

    grey = image.ndim == 2
    rgb = np.repeat(image[:, :, None], 3, axis=2) if grey else image
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    out = TF.resize(t, [int(size), int(size)], antialias=True).permute(1, 2, 0).contiguous().numpy()
    return np.ascontiguousarray(out[:, :, 0]) if grey else out


def read_cached(path: Path) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The cached ``(image, orig_size)`` of ``path``, or None when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            image = np.array(z["image"])
            h, w = (int(v) for v in z["orig_size"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent, or truncated by a foreign writer
        return None
    return image, (h, w)


def write_cached(path: Path, image: np.ndarray, orig_size: tuple[int, int]) -> None:
    """Store one decoded image atomically (see the module docstring)."""
    buf = io.BytesIO()
    np.savez(buf, image=np.ascontiguousarray(image, dtype=np.uint8),
             orig_size=np.asarray(orig_size, dtype=np.int64))
    atomic_write_bytes(buf.getvalue(), path)
