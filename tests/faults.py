"""A crash in the middle of writing a file, for the resume tests of the per-image steps."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path


class CrashMidWrite(Exception):
    """Raised by :func:`crash_mid_write` once half of a file is written."""


def crash_mid_write(monkeypatch, owner, name: str, target_arg: int, on_call: int) -> list:
    """Patch the encoder ``owner.name`` (``np.save``, ``PIL.Image.Image.save``, ``torch.save``)
    so that its ``on_call``-th call (1-based) writes only the first half of its bytes to its
    target and raises :class:`CrashMidWrite`, as a process killed mid-write would.

    The target (positional argument ``target_arg``) may be a path, which is then left
    truncated on disk (what a non-atomic writer leaves behind), or a file object (an atomic
    writer's in-memory buffer), which gets the half.

    Calls may come from several threads (:class:`wsss_fast.engine.files.BackgroundWriter`):
    exactly one of them, the ``on_call``-th to start, crashes.

    Returns:
        The list of calls so far (one entry per call).
    """
    real = getattr(owner, name)
    calls: list = []
    lock = threading.Lock()

    def wrapper(*args, **kwargs):
        with lock:
            calls.append(1)
            n = len(calls)
        if n != on_call:
            return real(*args, **kwargs)
        target = args[target_arg]
        if isinstance(target, (str, os.PathLike)):
            real(*args, **kwargs)
            written = [p for p in (Path(target), Path(str(target) + ".npy")) if p.exists()]
            for p in written:
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        else:
            buf = io.BytesIO()
            real(*args[:target_arg], buf, *args[target_arg + 1:], **kwargs)
            target.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise CrashMidWrite(f"crash while writing {target!r}")

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def files_in(folder: Path) -> list[str]:
    """Every file name in ``folder`` (hidden temporary files included), sorted."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file())
