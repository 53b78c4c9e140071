"""Atomic file I/O of a run: its configuration, checkpoints, CAM files, label PNGs and arrays.

Resumable steps skip every per-image output that exists, so each one is written by
:func:`atomic_write_bytes` (a temporary file in the same folder, then ``os.replace``): a
crash leaves either the whole file or none under its name.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
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


class BackgroundWriter:
    """Per-image file writes on a few threads, off the loop that feeds the GPU.

    PNG and ``np.save`` encoding release the GIL for much of their work. At most ``max_pending``
    writes wait at a time (``submit`` blocks on the oldest beyond that); the first failed write
    raises in the caller, at the latest when the ``with`` block ends, which waits for them all.

    Args:
        threads: writer threads.
        max_pending: writes queued or running at once (their arrays are held until written).
    """

    def __init__(self, threads: int = 4, max_pending: int = 64) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(threads)), thread_name_prefix="writer")
        self._pending: deque[Future] = deque()
        self._max = max(1, int(max_pending))

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; raise the error of a finished write, if one failed."""
        while self._pending and (self._pending[0].done() or len(self._pending) >= self._max):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        """Wait for every queued write; raise the first error."""
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written checkpoint behind."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(buf.getvalue(), path)


def save_config(cfg: dict, path: str | Path) -> bool:
    """Write the resolved configuration beside a run's outputs (``RUN/config.yaml``), atomically.

    Args:
        cfg: the configuration from :func:`wsss_fast.config.load_config`.
        path: the YAML file.

    Returns:
        True when it replaced a different configuration saved there before (the run's earlier
        steps ran with that one).
    """
    path, text = Path(path), yaml.safe_dump(cfg, sort_keys=False)
    old = path.read_text() if path.exists() else None
    atomic_write_bytes(text.encode(), path)
    return old is not None and old != text


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
