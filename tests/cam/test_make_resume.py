"""make-cam resumes after a crash in the middle of writing a CAM file: no truncated file is
left under its name (a resumed run skips existing files), and the resumed run recomputes it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from faults import CrashMidWrite, crash_mid_write, files_in  # noqa: E402

from wsss_fast.cam.make import make_cam  # noqa: E402
from wsss_fast.config import load_config  # noqa: E402
from wsss_fast.data import build_dataset  # noqa: E402
from wsss_fast.cls.model import Classifier, classifier_kwargs  # noqa: E402
from wsss_fast.engine.paths import RunPaths  # noqa: E402
from wsss_fast.engine.files import atomic_torch_save, load_cam_file

pytestmark = pytest.mark.usefixtures("one_thread")


def cam_cfg(data_root, *overrides: str) -> dict:
    """A synthetic set of 12 images (48 px, worked at 32 px) and a tiny resnet18 classifier."""
    return load_config(None, [
        "device=cpu", "num_workers=0", "seed=0", "dataset.name=synthetic", f"dataset.root={data_root}",
        "dataset.image_size=32", "dataset.synthetic.num_images=12", "dataset.synthetic.image_size=48",
        "dataset.split_counts={train: [2, 2], val: [1, 1], test: [1, 1]}",
        "cls.arch=resnet18", "cls.head_channels=8", "cls.dropblock.block_size=3",
        "cam.scales=[1.0]", "cam.flip=false", "cam.batch_size=4", *overrides])


def write_classifier(cfg: dict, paths: RunPaths, seed: int = 0) -> None:
    torch.manual_seed(seed)
    kwargs = classifier_kwargs(cfg, load_pretrained=False)
    atomic_torch_save({"epoch": 1, "model": Classifier(**kwargs).state_dict(), "f1": 0.0, "arch": "resnet18",
                       "model_kwargs": kwargs, "class_names": []}, paths.cls / "best.pt")


def assert_same_cams(a: RunPaths, b: RunPaths, atol: float = 0.0) -> None:
    names = files_in(a.cam)
    assert names == files_in(b.cam) and ".done" in names and len(names) > 8
    for name in names:
        if name.endswith(".npy"):
            da, db = load_cam_file(a.cam / name), load_cam_file(b.cam / name)
            assert set(da) == set(db)
            for k in da:
                np.testing.assert_allclose(da[k].astype(np.float32), db[k].astype(np.float32), atol=atol,
                                           err_msg=f"{name} {k}")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def test_crash_mid_write_then_resume_recomputes_the_file(tmp_path, data_root, monkeypatch):
    cfg = cam_cfg(data_root)
    ref = RunPaths(tmp_path / "ref")
    write_classifier(cfg, ref)
    make_cam(cfg, ref)

    paths = RunPaths(tmp_path / "run")
    write_classifier(cfg, paths)
    real_save = np.save
    crash_mid_write(monkeypatch, np, "save", 0, on_call=3)  # the third file written (of the first split)
    with pytest.raises(CrashMidWrite):
        make_cam(cfg, paths)
    ids = build_dataset(cfg, "train", paths, train=False).image_ids
    # files are written on threads, in any order: the crashed one is missing, the others whole
    written = files_in(paths.cam)
    assert 2 <= len(written) < len(ids) and set(written) < {f"{i}.npy" for i in ids}
    for name in written:
        assert (paths.cam / name).read_bytes() == (ref.cam / name).read_bytes(), name
    assert not paths.is_done(paths.cam)
    monkeypatch.setattr(np, "save", real_save)
    make_cam(cfg, paths)
    assert paths.is_done(paths.cam)
    assert_same_cams(ref, paths)
