"""CI-sized end-to-end run of the multi-class (VOC) path on tiny synthetic scenes (`wsss-fast run`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_fast.cli.pipeline import prepare_demo_data, run_pipeline
from wsss_fast.config import load_config
from wsss_fast.data import VOC2012, build_dataset
from wsss_fast.engine.files import load_cam_file
from wsss_fast.engine.paths import RunPaths
from wsss_fast.irn.sem_seg import eval_sem_seg
from wsss_fast.metrics import SegEvaluator
from wsss_fast.steps import PIPELINE

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["background", "disc", "box", "star", "ring"]
TINY = {
    "device": "cpu",
    "num_workers": 0,
    "dataset": {"image_size": 64, "split_counts": {"train": [1, 0], "val": [1, 0], "test": [1, 0]},
                "synthetic": {"num_images": 24, "image_size": 80}},
    "cls": {"epochs": 1, "batch_size": 8, "amp": False},
    "cam": {"scales": [1.0], "flip": False, "batch_size": 8},
    "ir_label": {"crf": {"iterations": 2}, "workers": 0},
    "irn": {"crop_size": 64, "radius": 4, "epochs": 1, "batch_size": 8, "amp": False},
    "sem_seg": {"val_steps": [0, 8], "batch_size": 4, "processes": 1, "workers": 0},
    "seg": {"epochs": 1, "batch_size": 8, "image_size": 64, "amp": False},
    "evaluate": {"num_figures": 2},
}


def _png(path) -> np.ndarray:
    return np.array(Image.open(path))


@pytest.mark.slow
def test_tiny_end_to_end_multiclass(tmp_path):
    cfg = load_config("demo_voc", TINY)
    out = tmp_path / "run"
    cfg = prepare_demo_data(cfg, out)
    paths = RunPaths(out)
    timings = run_pipeline(cfg, paths, log=lambda s: None)

    for step in PIPELINE:
        assert paths.is_done(step.folder(paths)), step.name
        assert timings[step.name] > 0
    state = torch.load(paths.seg / "final.pt", map_location="cpu", weights_only=False)
    head = [v for k, v in state["model"].items() if "segmentation_head" in k and k.endswith("weight")]
    assert state["num_classes"] == 4 and head[-1].shape[0] == 5  # 5-way cross-entropy, not the binary head

    train_classes = set()
    for split in ("train", "val", "test"):
        ds = build_dataset(cfg, split, paths, train=False)
        assert isinstance(ds, VOC2012) and len(ds) == 8 and ds.class_names == NAMES[1:]
        for i, name in enumerate(ds.image_ids):
            gt = ds.load_mask(i)
            assert gt.shape == (80, 80)
            present = {0} | {k + 1 for k in np.flatnonzero(ds.labels[i])}
            # CAMs of exactly the image's classes (cam.use_labels), at the working resolution
            cam = load_cam_file(paths.cam / f"{name}.npy")
            assert sorted(np.asarray(cam["keys"]).tolist()) == np.flatnonzero(ds.labels[i]).tolist()
            assert cam["high_res"].shape == (len(cam["keys"]), 64, 64)
            # multi-class pseudo labels at the original resolution, using only the image's classes
            lab = _png(paths.sem_seg / f"{name}.png")
            assert lab.shape == gt.shape and set(np.unique(lab).tolist()) <= present
            if split == "train":
                train_classes |= set(np.unique(lab).tolist()) - {0}
                assert set(np.unique(_png(paths.ir_label / f"{name}.png")).tolist()) <= present | {255}
            else:
                pred = _png(paths.seg_pred / f"{name}.png")
                assert pred.shape == gt.shape and set(np.unique(pred).tolist()) <= {0, 1, 2, 3, 4}
    assert len(train_classes) >= 2  # the walk labels more than one class over the train scenes

    report = json.loads(paths.report.read_text())
    assert set(report["splits"]) == {"val", "test"}
    for split in ("val", "test"):
        assert set(report["splits"][split]) == {"cam", "irnet", "seg"}
        for r in report["splits"][split].values():
            for key in ("miou_all", "miou_pos"):
                assert 0.0 <= r[key] <= 1.0
            assert r["miou_all"] == r["miou_pos"] and r["n_pos"] == r["n_images"] == 8  # every scene has an object
            for per_class in (r["iou_all"], r["iou_pos"]):
                assert list(per_class) == NAMES
                assert all(v is None or 0.0 <= v <= 1.0 for v in per_class.values())
                assert per_class["background"] is not None
    # thresholds chosen on val inside the run; the multi-class segmentation takes the argmax (no threshold)
    th = report["thresholds"]
    assert set(th) >= {"cam.bg_thres", "ir_label.conf_fg_thres", "ir_label.conf_bg_thres", "sem_seg.steps",
                       "sem_seg.bg_thres"}
    assert th["seg.threshold"] == {"value": None, "source": "multi-class: argmax, no threshold"}
    assert all("val" in v["source"] for k, v in th.items() if k != "seg.threshold")
    # the IRNet rows are eval-sem-seg's; the segmentation rows those of the PNGs, evaluated here
    pseudo = eval_sem_seg(cfg, paths, ["val", "test"])
    for split in ("val", "test"):
        assert report["splits"][split]["irnet"]["miou_all"] == pytest.approx(pseudo[split]["labels"]["miou_all"],
                                                                             rel=1e-12)
        ds = build_dataset(cfg, split, paths, train=False)
        seg = SegEvaluator(5, class_names=NAMES)
        for i, name in enumerate(ds.image_ids):
            seg.add(_png(paths.seg_pred / f"{name}.png"), ds.load_mask(i), True)
        result = seg.result()
        assert report["splits"][split]["seg"]["miou_all"] == pytest.approx(result["miou_all"], rel=1e-12)
        for c in NAMES:
            ours, theirs = report["splits"][split]["seg"]["iou_all"][c], result["iou_all"][c]
            assert (ours is None and np.isnan(theirs)) or ours == pytest.approx(theirs, rel=1e-12), c
    assert len(list(paths.figures.glob("test_*.png"))) == 2

    # benchmarks/seg_with_labels.py: its plain argmax is the report's segmentation row
    spec = importlib.util.spec_from_file_location("seg_with_labels", ROOT / "benchmarks" / "seg_with_labels.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    scored = script.score(out)
    for split in ("val", "test"):
        for key, row in (("seg", "seg"), ("irnet", "irnet")):
            assert scored[split][key] == round(report["splits"][split][row]["miou_all"] * 100, 2), (split, key)
        assert 0.0 <= scored[split]["seg_given_labels"] <= 100.0
