"""CI-sized end-to-end run of the whole pipeline on a tiny synthetic set (`wsss-fast run`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from wsss_fast.cli.pipeline import prepare_demo_data, run_pipeline
from wsss_fast.config import load_config
from wsss_fast.data import build_dataset
from wsss_fast.irn.sem_seg import eval_sem_seg
from wsss_fast.metrics import SegEvaluator
from wsss_fast.report import evaluate_split
from wsss_fast.engine.paths import RunPaths
from wsss_fast.engine.files import load_cam_file
from wsss_fast.steps import PIPELINE

TINY = {
    "device": "cpu",
    "num_workers": 0,
    "dataset": {"image_size": 64, "split_counts": {"train": [1, 1], "val": [1, 1], "test": [1, 1]},
                "synthetic": {"num_images": 24, "image_size": 96, "positive_fraction": 0.5}},
    "cls": {"epochs": 1, "batch_size": 8, "amp": False},
    "cam": {"scales": [1.0], "flip": False, "batch_size": 8},
    "ir_label": {"crf": {"iterations": 2}, "workers": 0},
    "irn": {"crop_size": 64, "radius": 4, "epochs": 1, "batch_size": 8, "amp": False},
    "sem_seg": {"val_steps": [0, 8], "batch_size": 4, "processes": 1, "workers": 0},
    "seg": {"epochs": 1, "batch_size": 8, "image_size": 64, "amp": False},
    "evaluate": {"num_figures": 2},
}


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path):
    cfg = load_config("demo", TINY)
    out = tmp_path / "run"
    cfg = prepare_demo_data(cfg, out)
    paths = RunPaths(out)
    timings = run_pipeline(cfg, paths)

    # every step ran and marked itself done
    for step in PIPELINE:
        assert paths.is_done(step.folder(paths)), step.name
        assert timings[step.name] > 0
    assert paths.config.exists() and (paths.root / "timings.json").exists()
    assert (paths.cls / "best.pt").exists() and (paths.cls / "last.pt").exists()
    assert any(paths.irn.glob("*.pt")) and (paths.seg / "final.pt").exists()

    for split in ("train", "val", "test"):
        ds = build_dataset(cfg, split, paths, train=False)
        assert len(ds) > 0
        for i, name in enumerate(ds.image_ids):
            cam = load_cam_file(paths.cam / f"{name}.npy")
            assert cam["high_res"].shape[-2:] == (64, 64)
            lab = np.array(Image.open(paths.sem_seg / f"{name}.png"))
            assert lab.shape == tuple(ds.load_mask(i).shape)  # pseudo labels at original resolution
            if split == "train":
                assert (paths.ir_label / f"{name}.png").exists()
            else:
                pred = np.array(Image.open(paths.seg_pred / f"{name}.png"))
                assert pred.shape == tuple(ds.load_mask(i).shape) and set(np.unique(pred)) <= {0, 1}

    report = json.loads(paths.report.read_text())
    assert set(report["splits"]) == {"val", "test"}
    for split in ("val", "test"):
        assert set(report["splits"][split]) == {"cam", "irnet", "seg"}
        for r in report["splits"][split].values():
            for key in ("miou_all", "miou_pos", "dice"):
                assert 0.0 <= r[key] <= 1.0
    assert set(report["timings_s"]) >= {s.name for s in PIPELINE} | {"total"}
    # the report's rows are the numbers of the steps' own evaluations: the CAM row of val at
    # eval-cam's best threshold, swept on val only; the IRNet rows those of eval-sem-seg
    swept = json.loads((paths.cam / "eval.json").read_text())
    assert set(swept["splits"]) == {"val"}
    best = swept["splits"]["val"]["best"]
    assert report["cam_bg_thres"] == best["threshold"]
    # every threshold was chosen on val inside the run, and the report says so
    th = report["thresholds"]
    assert set(th) == {"cam.bg_thres", "ir_label.conf_fg_thres", "ir_label.conf_bg_thres", "sem_seg.steps",
                       "sem_seg.bg_thres", "sem_seg.edge_mask", "seg.threshold"}
    assert th.pop("sem_seg.edge_mask") == {"value": True, "source": "sem_seg.edge_mask"}  # IRNet's, configured
    assert th["cam.bg_thres"]["value"] == best["threshold"]
    assert th["ir_label.conf_bg_thres"]["value"] < th["ir_label.conf_fg_thres"]["value"]
    ir = json.loads((paths.ir_label / "thresholds.json").read_text())["conf_fg_thres"]
    assert {"value": ir["value"], "source": ir["source"]} == th["ir_label.conf_fg_thres"]
    tune = json.loads((paths.sem_seg / "tune.json").read_text())
    assert (th["sem_seg.steps"]["value"], th["sem_seg.bg_thres"]["value"]) == (tune["steps"], tune["bg_thres"])
    assert th["seg.threshold"]["value"] == json.loads((paths.seg_pred / "threshold.json").read_text())["threshold"]
    assert all("val" in v["source"] for v in th.values())
    # the report's CAM labelling equals eval-cam's at a threshold where the CAM finds foreground
    # too (the best one of this tiny run may find none, and then any map would score the same)
    row = next(r for r in swept["splits"]["val"]["thresholds"] if r["threshold"] == 0.3)
    assert row["fg_recall"] > 0
    at_03, _ = evaluate_split(cfg, paths, build_dataset(cfg, "val", paths, train=False), 0.3, "val")
    for key in ("miou_all", "miou_pos", "dice"):
        assert at_03["cam"][key] == pytest.approx(row[key], rel=1e-12), key
    pseudo = eval_sem_seg(cfg, paths, ["val", "test"])
    for key in ("miou_all", "miou_pos", "dice"):
        assert report["splits"]["val"]["cam"][key] == pytest.approx(best[key], rel=1e-12), key
        for split in ("val", "test"):
            assert report["splits"][split]["irnet"][key] == pytest.approx(pseudo[split]["labels"][key], rel=1e-12)
    # ... and the segmentation rows those of the predicted PNGs against the masks, evaluated here
    # (at this size nothing is learnt: the tiny run cannot show segmentation beating an
    # all-background prediction; 10 epochs per step gave seg 0.39 vs background 0.49 mIoU)
    for split in ("val", "test"):
        ds = build_dataset(cfg, split, paths, train=False)
        seg = SegEvaluator(2)
        for i, name in enumerate(ds.image_ids):
            seg.add(np.array(Image.open(paths.seg_pred / f"{name}.png")), ds.load_mask(i),
                    bool(np.asarray(ds.labels[i]).any()))
        for key in ("miou_all", "miou_pos", "dice"):
            assert report["splits"][split]["seg"][key] == pytest.approx(seg.result()[key], rel=1e-12), key
    assert len(list(paths.figures.glob("test_*.png"))) == 2

    # a second run finds everything done and does nothing
    again = run_pipeline(cfg, paths, log=lambda s: None)
    assert again == json.loads((paths.root / "timings.json").read_text())
