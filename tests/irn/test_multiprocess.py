"""The process-parallel paths of the IRNet step on a tiny synthetic set (real spawned processes,
which rebuild the data set themselves): make-ir-label's worker pool (``ir_label.workers`` > 1)
and make-sem-seg's spawned shard processes (``sem_seg.processes`` > 1) write what one process
writes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from wsss_fast.cam.make import make_cam
from wsss_fast.config import load_config
from wsss_fast.data import build_dataset
from wsss_fast.engine.files import read_png
from wsss_fast.irn.ir_label import make_ir_label
from wsss_fast.irn.model import IRNet
from wsss_fast.irn.sem_seg import make_sem_seg
from wsss_fast.cls.model import Classifier, classifier_kwargs
from wsss_fast.engine.paths import RunPaths
from wsss_fast.engine.files import atomic_torch_save


def mp_cfg(data_root, **over) -> dict:
    o = {"device": "cpu", "num_workers": 0, "seed": 0,
         "dataset": {"name": "synthetic", "root": str(data_root), "image_size": 32,
                     "synthetic": {"num_images": 12, "image_size": 48},
                     "split_counts": {"train": [2, 2], "val": [1, 1], "test": [1, 1]}},
         "cls": {"arch": "resnet18", "head_channels": 8, "dropblock": {"block_size": 3}},
         "cam": {"scales": [1.0], "flip": False, "batch_size": 4},
         "ir_label": {"workers": 0, "crf": {"iterations": 2}, "conf_fg_thres": 0.30, "conf_bg_thres": 0.05},
         "sem_seg": {"steps": 8, "bg_thres": 0.25, "batch_size": 2, "processes": 1, "workers": 0, "splits": ["train"]}}
    for k, v in over.items():
        o[k] = {**o[k], **v} if isinstance(v, dict) else v
    return load_config(None, o)


@pytest.fixture(scope="module")
def cams(tmp_path_factory):
    """(run with CAM files and a random IRNet final.pt, data root)."""
    data_root = tmp_path_factory.mktemp("synthetic_mp")
    paths = RunPaths(tmp_path_factory.mktemp("run_mp"))
    cfg = mp_cfg(data_root)
    torch.manual_seed(0)
    kwargs = classifier_kwargs(cfg, load_pretrained=False)
    atomic_torch_save({"epoch": 1, "model": Classifier(**kwargs).state_dict(), "f1": 0.0, "arch": "resnet18",
                       "model_kwargs": kwargs, "class_names": []}, paths.cls / "best.pt")
    make_cam(cfg, paths)
    net = IRNet("resnet18")
    atomic_torch_save({"model": net.state_dict(), "backbone": "resnet18", "radius": 4,
                       "dp_mean": torch.zeros(2), "steps": 0}, paths.irn / "final.pt")
    return paths, data_root


def _copy(src: RunPaths, dst: RunPaths) -> RunPaths:
    for sub in ("cam", "irn"):
        shutil.copytree(src.root / sub, dst.root / sub)
    shutil.copy(src.split, dst.split)
    return dst


def test_make_ir_label_worker_pool_equals_one_process(cams, tmp_path):
    src, data_root = cams
    one, pool = _copy(src, RunPaths(tmp_path / "one")), _copy(src, RunPaths(tmp_path / "pool"))
    make_ir_label(mp_cfg(data_root), one)
    make_ir_label(mp_cfg(data_root, ir_label={"workers": 2}), pool)
    ids = build_dataset(mp_cfg(data_root), "train", one, train=False).image_ids
    assert pool.is_done(pool.ir_label)
    for image_id in ids:
        np.testing.assert_array_equal(read_png(pool.ir_label / f"{image_id}.png"),
                                      read_png(one.ir_label / f"{image_id}.png"), err_msg=image_id)


def test_make_sem_seg_spawned_shards_equal_one_process(cams, tmp_path):
    src, data_root = cams
    one, spawned = _copy(src, RunPaths(tmp_path / "one")), _copy(src, RunPaths(tmp_path / "spawn"))
    make_sem_seg(mp_cfg(data_root), one)
    make_sem_seg(mp_cfg(data_root, sem_seg={"processes": 2}), spawned)
    assert spawned.is_done(spawned.sem_seg)
    ids = build_dataset(mp_cfg(data_root), "train", one, train=False).image_ids
    assert sorted(p.stem for p in spawned.sem_seg.glob("*.png")) == sorted(ids) and len(ids) > 4
    for image_id in ids:
        np.testing.assert_array_equal(read_png(spawned.sem_seg / f"{image_id}.png"),
                                      read_png(one.sem_seg / f"{image_id}.png"), err_msg=image_id)
        np.testing.assert_allclose(np.load(spawned.rw / f"{image_id}.npy").astype(np.float32),
                                   np.load(one.rw / f"{image_id}.npy").astype(np.float32), atol=2e-3)
