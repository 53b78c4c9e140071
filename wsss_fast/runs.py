"""Layout of a run directory and atomic file writes.

Every output of a run lives under one folder::

    OUT/config.yaml        resolved configuration
    OUT/split.json         the data split, written once and reused
    OUT/cls/               step 1 classifier: last.pt, best.pt, train.log
    OUT/cam/<id>.npy       CAMs, IRNet's make_cam format (dict: keys, cam, high_res; fp16)
    OUT/ir_label/<id>.png  confident fg/bg labels (255 = ignore)
    OUT/irn/               IRNet: last.pt, final.pt (with the displacement mean), train.log
    OUT/rw/<id>.npy        random-walk soft maps (fp16), for threshold sweeps
    OUT/sem_seg/<id>.png   pseudo labels at the original resolution
    OUT/seg/               step 3 segmentation model checkpoints
    OUT/seg_pred/<id>.png  segmentation predictions
    OUT/figures/           PNG panels
    OUT/report.json        the evaluation table

A step marks itself finished by writing ``<step dir>/.done``; ``wsss-fast run`` skips
finished steps. Resumable steps skip every per-image output that exists, so each one is
written by :func:`atomic_write_bytes` (through :func:`save_cam_file`, :func:`write_png`,
:func:`write_npy`): a crash leaves either the whole file or none under its name.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class RunPaths:
    """Paths of one run directory (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def cls(self) -> Path:
        return self.root / "cls"

    @property
    def cam(self) -> Path:
        return self.root / "cam"

    @property
    def ir_label(self) -> Path:
        return self.root / "ir_label"

    @property
    def irn(self) -> Path:
        return self.root / "irn"

    @property
    def rw(self) -> Path:
        return self.root / "rw"

    @property
    def sem_seg(self) -> Path:
        return self.root / "sem_seg"

    @property
    def seg(self) -> Path:
        return self.root / "seg"

    @property
    def seg_pred(self) -> Path:
        return self.root / "seg_pred"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def mark_done(self, step_dir: Path) -> None:
        step_dir.mkdir(parents=True, exist_ok=True)
        (step_dir / ".done").write_text("")

    def is_done(self, step_dir: Path) -> bool:
        return (step_dir / ".done").exists()


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


def load_cam_file(path: str | Path) -> dict:
    """Load a file written by :func:`save_cam_file` (or by IRNet's ``make_cam``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CAM file not found: {path}")
    return np.load(path, allow_pickle=True).item()


def resolve_device(cfg: dict) -> torch.device:
    """The device named by ``cfg["device"]`` (``auto`` picks CUDA when present)."""
    name = str(cfg.get("device", "auto"))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"config device '{name}' asks for CUDA, but no CUDA device is available")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
