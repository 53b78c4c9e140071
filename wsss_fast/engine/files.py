"""Atomic file I/O of a run: checkpoints, CAM files, label PNGs and arrays.

Resumable steps skip every per-image output that exists, so each one is written by
:func:`atomic_write_bytes` (a temporary file in the same folder, then ``os.replace``): a
crash leaves either the whole file or none under its name.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written checkpoint behind."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(buf.getvalue(), path)


def save_cam_file(path: str | Path, keys: np.ndarray, cam: np.ndarray, high_res: np.ndarray,
                  **extra: np.ndarray) -> None:
    """Save one image's maps as IRNet's ``make_cam`` does: a dict in a ``.npy`` file.

    Args:
        path: the ``.npy`` file.
        keys: int array [K] of the positive classes (0-based foreground class indices).
        cam: [K, h, w] maps at stride 4, normalized to [0, 1]; stored as fp16.
        high_res: [K, H, W] maps at input resolution, normalized to [0, 1]; stored as fp16.
        **extra: further arrays (e.g. ``raw``, the unnormalized maps), stored as fp16.
    """
    payload = {"keys": np.asarray(keys, dtype=np.int64),
               "cam": np.asarray(cam, dtype=np.float16),
               "high_res": np.asarray(high_res, dtype=np.float16)}
    for k, v in extra.items():
        payload[k] = np.asarray(v, dtype=np.float16)
    buf = io.BytesIO()
    np.save(buf, payload, allow_pickle=True)
    atomic_write_bytes(buf.getvalue(), path)


def write_png(label: np.ndarray, path: str | Path) -> None:
    """Write a uint8 ``[H, W]`` label map as a PNG, atomically."""
    label = np.asarray(label)
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"label PNG must be uint8 [H, W], got {label.dtype} {tuple(label.shape)}")
    buf = io.BytesIO()
    Image.fromarray(label).save(buf, format="PNG")
    atomic_write_bytes(buf.getvalue(), path)


def write_npy(arr: np.ndarray, path: str | Path) -> None:
    """``np.save`` of one array (no pickle), atomically."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(buf.getvalue(), path)


def read_png(path: str | Path) -> np.ndarray:
    """Read a label PNG as a writable uint8 ``[H, W]``; a missing file is a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"label file not found: {path}")
    with Image.open(path) as im:
        return np.array(im, dtype=np.uint8)


def read_json(path: str | Path) -> dict | None:
    """A JSON file's content, or None when the file is missing, unreadable or not JSON."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_cam_file(path: str | Path) -> dict:
    """Load a file written by :func:`save_cam_file` (or by IRNet's ``make_cam``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CAM file not found: {path}")
    return np.load(path, allow_pickle=True).item()
