"""wsss_fast.engine.files: atomic writes (a crash while writing never leaves a partial file under
the final name; a resumed step skips every output file that exists)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/faults.py
from faults import CrashMidWrite, crash_mid_write, files_in  # noqa: E402

from wsss_fast.engine import files  # noqa: E402


class _Boom(Exception):
    pass


def test_atomic_write_bytes_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "a.bin"
    files.atomic_write_bytes(b"first", path)
    files.atomic_write_bytes(b"second", path)
    assert path.read_bytes() == b"second" and files_in(path.parent) == ["a.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_atomic_write_bytes_crash_leaves_no_partial_file(tmp_path, monkeypatch, fail_at):
    """The bytes reach the disk under a temporary name; a failure before the rename (while
    the data is flushed, or the rename itself) leaves no file under the final name, no
    temporary file, and an older complete file untouched."""
    def boom(*args, **kwargs):
        raise _Boom()

    monkeypatch.setattr(os, fail_at, boom)
    fresh, old = tmp_path / "fresh.png", tmp_path / "old.png"
    old.write_bytes(b"complete")
    for path in (fresh, old):
        with pytest.raises(_Boom):
            files.atomic_write_bytes(b"x" * 100_000, path)
    assert files_in(tmp_path) == ["old.png"] and old.read_bytes() == b"complete"


def test_save_config_replaces_the_file_whole_or_not_at_all(tmp_path, monkeypatch):
    """A step killed while saving its configuration leaves the run's earlier one, no half file."""
    path = tmp_path / "config.yaml"
    assert files.save_config({"cls": {"epochs": 1}}, path) is False
    before = path.read_text()
    assert files.save_config({"cls": {"epochs": 1}}, path) is False  # the same one: not a change

    def boom(*args, **kwargs):
        raise _Boom()

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(_Boom):
        files.save_config({"cls": {"epochs": 2}}, path)
    assert path.read_text() == before and files_in(tmp_path) == ["config.yaml"]
    monkeypatch.undo()
    assert files.save_config({"cls": {"epochs": 2}}, path) is True
    assert "epochs: 2" in path.read_text()


def _label() -> np.ndarray:
    return (np.arange(48 * 40).reshape(48, 40) % 7).astype(np.uint8)


# (writer call, encoder patched: owner, name, index of its target argument)
WRITERS = {
    "write_png": (lambda p: files.write_png(_label(), p), Image.Image, "save", 1, "x.png"),
    "write_npy": (lambda p: files.write_npy(np.ones((3, 5, 5), np.float16), p), np, "save", 0, "x.npy"),
    "save_cam_file": (lambda p: files.save_cam_file(p, np.array([0]), np.ones((1, 4, 4)), np.ones((1, 16, 16))),
                      np, "save", 0, "x.npy"),
    "atomic_torch_save": (lambda p: files.atomic_torch_save({"w": torch.ones(100)}, p), torch, "save", 1, "x.pt"),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_writer_crashing_mid_write_leaves_no_file(tmp_path, monkeypatch, writer):
    """Every per-image writer of the resumable steps encodes in memory and writes atomically:
    its encoder dying half way leaves nothing, and the next call writes the whole file."""
    write, owner, name, target_arg, fname = WRITERS[writer]
    path = tmp_path / fname
    crash_mid_write(monkeypatch, owner, name, target_arg, on_call=1)
    with pytest.raises(CrashMidWrite):
        write(path)
    assert files_in(tmp_path) == []
    write(path)  # the "resumed" call (the encoder's 2nd call is not patched)
    assert files_in(tmp_path) == [fname]
    ref = tmp_path / "ref" / fname
    write(ref)
    assert path.read_bytes() == ref.read_bytes()


def test_write_png_checks_the_label_type(tmp_path):
    files.write_png(_label(), tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), _label())
    with pytest.raises(ValueError, match="uint8"):
        files.write_png(_label().astype(np.int32), tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()


def test_background_writer_writes_everything_and_raises_the_first_error(tmp_path):
    with files.BackgroundWriter(threads=3, max_pending=4) as w:
        for k in range(20):
            w.submit(files.write_png, np.full((5, 7), k, np.uint8), tmp_path / f"{k}.png")
    assert sorted(int(p.stem) for p in tmp_path.glob("*.png")) == list(range(20))
    assert all(files.read_png(tmp_path / f"{k}.png")[0, 0] == k for k in range(20))

    def boom(*_):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with files.BackgroundWriter(threads=2, max_pending=2) as w:
            w.submit(boom)
            for k in range(5):  # the failure surfaces here (a finished write is checked) or at the end
                w.submit(files.write_png, np.zeros((3, 3), np.uint8), tmp_path / f"x{k}.png")
