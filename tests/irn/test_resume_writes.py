"""make-ir-label and make-sem-seg after a crash in the middle of writing an output file:
nothing truncated is left under the file's name (a resumed run skips existing files), and
the resumed run recomputes it, ending with the uninterrupted run's outputs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1]))
from faults import CrashMidWrite, crash_mid_write, files_in  # noqa: E402

from wsss_fast.irn.ir_label import make_ir_label  # noqa: E402
from wsss_fast.irn.sem_seg import make_sem_seg  # noqa: E402
from wsss_fast.irn.train import train_irn  # noqa: E402
from wsss_fast.engine.paths import RunPaths  # noqa: E402

from .conftest import tiny_cfg  # noqa: E402


def _same_files(a: Path, b: Path) -> None:
    names = files_in(a)
    assert names == files_in(b) and names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_make_ir_label_crash_mid_write(fake_data, tmp_path, monkeypatch):
    paths, datasets = fake_data
    cfg = tiny_cfg()
    ref = RunPaths(tmp_path / "ref")
    shutil.copytree(paths.cam, ref.cam)
    make_ir_label(cfg, ref)

    real_save = Image.Image.save
    crash_mid_write(monkeypatch, Image.Image, "save", 1, on_call=3)
    with pytest.raises(CrashMidWrite):
        make_ir_label(cfg, paths)
    ids = datasets["train"].image_ids
    # the PNGs are written by two threads: the crashed one is missing, the others complete, and
    # nothing else (no temporary file) is left
    names = files_in(paths.ir_label)
    pngs = [f for f in names if f.endswith(".png")]
    assert 2 <= len(pngs) < len(ids) and set(pngs) <= {f"{i}.png" for i in ids}
    assert set(names) - set(pngs) <= {"thresholds.json"}, names
    monkeypatch.setattr(Image.Image, "save", real_save)
    make_ir_label(cfg, paths)
    assert paths.is_done(paths.ir_label)
    _same_files(ref.ir_label, paths.ir_label)


@pytest.mark.parametrize("crash_in", ["png", "npy"])
def test_make_sem_seg_crash_mid_write(fake_data, tmp_path, monkeypatch, crash_in):
    """A crash in writing an image's soft map (npy) or label (png) leaves that image unfinished
    and no partial file, and the resume redoes it."""
    paths, datasets = fake_data
    cfg = tiny_cfg(irn={"epochs": 1}, sem_seg={"splits": ["train"], "batch_size": 2})
    make_ir_label(cfg, paths)
    train_irn(cfg, paths)
    ref = RunPaths(tmp_path / "ref")
    for sub in ("cam", "irn"):
        shutil.copytree(paths.root / sub, ref.root / sub)
    make_sem_seg(cfg, ref)

    owner, name, arg = (Image.Image, "save", 1) if crash_in == "png" else (np, "save", 0)
    real = getattr(owner, name)
    crash_mid_write(monkeypatch, owner, name, arg, on_call=3)  # the third image (second batch)
    with pytest.raises(CrashMidWrite):
        make_sem_seg(cfg, paths)
    ids = datasets["train"].image_ids
    # the files are written by threads: which ones beside the first two calls' made it varies, but
    # each is whole (no temporary file; the bytes of the uninterrupted run) and the crashed one is not there
    pngs, npys = files_in(paths.sem_seg), files_in(paths.rw)
    assert set(pngs) <= {f"{i}.png" for i in ids} and set(npys) <= {f"{i}.npy" for i in ids}
    assert 2 <= len(pngs if crash_in == "png" else npys) < len(ids)
    for folder, ref_folder, files in ((paths.sem_seg, ref.sem_seg, pngs), (paths.rw, ref.rw, npys)):
        for f in files:
            assert (folder / f).read_bytes() == (ref_folder / f).read_bytes(), f
    assert not paths.is_done(paths.sem_seg)
    monkeypatch.setattr(owner, name, real)
    make_sem_seg(cfg, paths)
    assert paths.is_done(paths.sem_seg)
    _same_files(ref.sem_seg, paths.sem_seg)
    _same_files(ref.rw, paths.rw)
