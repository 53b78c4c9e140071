"""Thresholds chosen on val inside the run: the IR labels' (from the CAM sweep) and the
random walk's steps and background score (``sem_seg.steps`` / ``bg_thres: val``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_fast.cam.make import eval_cam
from wsss_fast.irn.ir_label import cam_to_ir_label, fg_threshold_on_val, ir_thresholds, make_ir_label
from wsss_fast.irn.sem_seg import eval_sem_seg, make_sem_seg, tune_walk, walk_settings
from wsss_fast.irn.train import train_irn
from wsss_fast.engine.files import load_cam_file, read_png, save_cam_file
from wsss_fast.engine.paths import RunPaths
from wsss_fast.irn.common import resize_image_uint8
from wsss_fast.report import run_thresholds

from .conftest import tiny_cfg

ROWS = [  # a CAM sweep on val: fg_recall falls as the threshold rises
    {"threshold": 0.1, "fg_recall": 0.99}, {"threshold": 0.3, "fg_recall": 0.97},
    {"threshold": 0.5, "fg_recall": 0.96}, {"threshold": 0.6, "fg_recall": 0.90},
    {"threshold": 0.7, "fg_recall": 0.80}, {"threshold": 0.9, "fg_recall": 0.40}]


def _sweep(paths, best=0.6, rows=ROWS):
    paths.cam.mkdir(parents=True, exist_ok=True)
    (paths.cam / "eval.json").write_text(json.dumps(
        {"metric": "miou_all", "splits": {"val": {"thresholds": rows, "best": {"threshold": best}}}}))


def test_ir_bg_threshold_from_the_cam_sweep(tmp_path):
    paths = RunPaths(tmp_path)
    _sweep(paths)
    cfg = tiny_cfg(ir_label={"conf_fg_thres": 0.62, "conf_bg_thres": "val", "bg_recall": 0.95})
    got = ir_thresholds(cfg, paths)
    assert got["conf_fg_thres"] == {"value": 0.62, "source": "ir_label.conf_fg_thres"}
    assert got["conf_bg_thres"]["value"] == 0.5  # 0.5 keeps 0.96 >= 0.95 of val's fg; 0.6 only 0.90
    cfg["ir_label"]["bg_recall"] = 0.98
    assert ir_thresholds(cfg, paths)["conf_bg_thres"]["value"] == 0.1
    cfg["ir_label"]["bg_recall"] = 0.995  # no threshold keeps that much: the smallest
    assert ir_thresholds(cfg, paths)["conf_bg_thres"]["value"] == 0.1
    cfg = tiny_cfg(ir_label={"conf_fg_thres": 0.42, "conf_bg_thres": "val", "bg_recall": 0.95})
    assert ir_thresholds(cfg, paths)["conf_bg_thres"]["value"] == 0.3  # below conf_fg_thres only
    cfg = tiny_cfg(ir_label={"conf_fg_thres": 0.42, "conf_bg_thres": 0.1})  # numbers pass through
    assert {k: v["value"] for k, v in ir_thresholds(cfg, paths).items()} == {"conf_fg_thres": 0.42,
                                                                            "conf_bg_thres": 0.1}
    # the report's CAM threshold given as a number does not stop the choice (it uses val's sweep)
    forced = tiny_cfg(evaluate={"cam_bg_thres": 0.3},
                      ir_label={"conf_fg_thres": 0.62, "conf_bg_thres": "val", "bg_recall": 0.95})
    assert ir_thresholds(forced, paths)["conf_bg_thres"]["value"] == 0.5
    # no sweep on val: a clear error
    (paths.cam / "eval.json").unlink()
    with pytest.raises(ValueError, match="sweep on val"):
        ir_thresholds(tiny_cfg(ir_label={"conf_bg_thres": "val"}), paths)
    with pytest.raises(ValueError, match="numeric"):
        cam_to_ir_label(np.zeros((8, 8), np.uint8), {"keys": np.array([0]), "high_res": np.zeros((1, 8, 8))},
                        tiny_cfg(ir_label={"conf_fg_thres": "val"}))


def _fg_iou(ds, paths, cfg) -> float:
    """IoU with the masks of the confident fg that make-ir-label's labelling gives (after the CRF)."""
    tp = fp = fn = 0
    for i, name in enumerate(ds.image_ids):
        cam = load_cam_file(paths.cam / f"{name}.npy")
        size = tuple(np.asarray(cam["high_res"]).shape[1:])
        lab = cam_to_ir_label(resize_image_uint8(np.asarray(ds.load_image(i)), size), cam, cfg)
        gt = np.asarray(Image.fromarray(ds.load_mask(i)).resize(size[::-1], Image.NEAREST))
        tp += int(((lab == 1) & (gt == 1)).sum())
        fp += int(((lab == 1) & (gt != 1)).sum())
        fn += int(((lab != 1) & (gt == 1)).sum())
    return tp / (tp + fp + fn)


def test_make_ir_label_with_val_thresholds(fake_data, monkeypatch):
    """eval-cam's fg_recall is the share of val's lesion pixels above each threshold; the fg
    threshold is the one whose CRF-refined confident fg has the best IoU on val; make-ir-label
    labels with the chosen numbers (written to ir_label/thresholds.json)."""
    paths, datasets = fake_data
    monkeypatch.setattr("wsss_fast.data.build_dataset", lambda cfg, split, paths, train=False: datasets[split])
    grid = [0.05, 0.2, 0.5, 0.8, 0.97]
    cfg = tiny_cfg(cam={"eval_thresholds": grid, "eval_splits": ["val"]},
                   ir_label={"conf_fg_thres": "val", "conf_bg_thres": "val", "bg_recall": 0.9})
    eval_cam({**cfg, "num_workers": 2}, paths)  # counted in loader workers: the same file
    by_workers = (paths.cam / "eval.json").read_bytes()
    sweep = eval_cam(cfg, paths)["splits"]["val"]
    assert (paths.cam / "eval.json").read_bytes() == by_workers
    val = datasets["val"]
    for row in sweep["thresholds"]:
        above = total = 0
        for i, name in enumerate(val.image_ids):
            cam = load_cam_file(paths.cam / f"{name}.npy")
            if not len(cam["keys"]):
                continue
            hr = torch.nn.functional.interpolate(torch.from_numpy(np.asarray(cam["high_res"], np.float32))[None],
                                                 size=val.orig, mode="bilinear", align_corners=False)[0, 0].numpy()
            m = val.load_mask(i).astype(bool)
            above += int((hr[m] > row["threshold"]).sum())
            total += int(m.sum())
        assert row["fg_recall"] == pytest.approx(above / total)
    make_ir_label(cfg, paths)
    chosen = json.loads((paths.ir_label / "thresholds.json").read_text())
    fg = chosen["conf_fg_thres"]["value"]
    ious = {t: _fg_iou(val, paths, tiny_cfg(ir_label={"conf_fg_thres": t, "conf_bg_thres": 0.0})) for t in grid}
    assert len({round(v, 6) for v in ious.values()}) == len(grid)  # the thresholds differ ...
    assert fg == max(grid, key=ious.get) and fg != grid[0]  # ... and the best one is taken
    assert {r["threshold"]: r["iou"] for r in chosen["conf_fg_thres"]["sweep"]} == pytest.approx(ious)
    assert fg_threshold_on_val({**cfg, "num_workers": 2}, paths) == (fg, chosen["conf_fg_thres"]["sweep"])
    plain = {**cfg, "ir_label": {**cfg["ir_label"], "crf": {**cfg["ir_label"]["crf"], "enabled": False}}}
    no_crf = {t: _fg_iou(val, paths, tiny_cfg(ir_label={"conf_fg_thres": t, "conf_bg_thres": 0.0,
                                                        "crf": {"enabled": False}})) for t in grid}
    assert no_crf != pytest.approx(ious)  # the CRF changes the maps ...
    for workers in (0, 2):  # ... and without it the loader workers count them
        _, rows = fg_threshold_on_val({**plain, "num_workers": workers}, paths)
        assert {r["threshold"]: r["iou"] for r in rows} == pytest.approx(no_crf)
    ok = [r["threshold"] for r in sweep["thresholds"] if r["threshold"] < fg and r["fg_recall"] >= 0.9]
    assert chosen["conf_bg_thres"]["value"] == (max(ok) if ok else 0.2)
    num = tiny_cfg(ir_label={"conf_fg_thres": fg, "conf_bg_thres": chosen["conf_bg_thres"]["value"]})
    ds = datasets["train"]
    for i, name in enumerate(ds.image_ids):
        cam = load_cam_file(paths.cam / f"{name}.npy")
        img = resize_image_uint8(np.asarray(ds.load_image(i)), tuple(np.asarray(cam["high_res"]).shape[1:]))
        np.testing.assert_array_equal(read_png(paths.ir_label / f"{name}.png"), cam_to_ir_label(img, cam, num))


@pytest.mark.parametrize("metric", ["miou_all", "dice"])
def test_walk_steps_and_bg_thres_chosen_on_val(fake_data, metric, monkeypatch):
    """The chosen (steps, bg_thres) is the best of the grid on val by ``sem_seg.eval_metric``,
    the grid's figures are those of make-sem-seg + eval-sem-seg with those numbers, and every
    split is labelled with the choice; neither the choice nor the labels run IRNet's
    displacement branch (the walk uses the boundaries only)."""
    import wsss_fast.irn.sem_seg as sem_seg_mod

    built = []

    class Spy(sem_seg_mod.EdgeDisplacement):
        def __init__(self, net, displacement=True):
            built.append(displacement)
            super().__init__(net, displacement)

    monkeypatch.setattr(sem_seg_mod, "EdgeDisplacement", Spy)
    paths, datasets = fake_data
    val = datasets["val"]
    # a CAM that fires on a negative val image (as with cam.use_labels false): its false
    # positives weigh on mIoU (all) but not on the per-image Dice, so the two metrics pick
    # different cells of the grid
    src = load_cam_file(paths.cam_file(val.image_ids[0]))
    assert not val.labels[1].any()
    save_cam_file(paths.cam_file(val.image_ids[1]), src["keys"], src["cam"], src["high_res"])
    grid_steps, grid_thres = [0, 64, 4], [0.9, 0.2, 0.5]
    cfg = tiny_cfg(irn={"epochs": 2}, sem_seg={"steps": "val", "bg_thres": "val", "val_steps": grid_steps,
                                               "eval_thresholds": grid_thres, "eval_metric": metric,
                                               "splits": ["train", "val"]})
    make_ir_label(tiny_cfg(), paths)
    train_irn(cfg, paths)
    make_sem_seg(cfg, paths)
    assert len(built) >= 2 and not any(built), built  # the choice on val, then the labels
    tune = json.loads((paths.sem_seg / "tune.json").read_text())
    scores = {m: {(int(n), float(t)): r[m] for n, row in tune["grid"].items() for t, r in row.items()}
              for m in ("miou_all", "dice")}
    assert len(scores[metric]) == 9 and len({round(v, 9) for v in scores[metric].values()}) > 2
    best = max(scores[metric], key=scores[metric].get)
    rival = scores["dice" if metric == "miou_all" else "miou_all"]
    assert best != max(rival, key=rival.get)  # the metric decides
    assert (tune["steps"], tune["bg_thres"]) == best and tune["metric"] == metric
    assert walk_settings(cfg, paths) == tune  # reused
    by_workers = tune_walk({**cfg, "sem_seg": {**cfg["sem_seg"], "workers": 2}}, paths, "cpu")
    assert json.dumps(by_workers, sort_keys=True) == json.dumps({k: tune[k] for k in by_workers}, sort_keys=True)
    # an independent check of one grid cell: labels with those numbers, evaluated
    n, t = best
    other = RunPaths(paths.root.parent / "check")
    shutil.copytree(paths.cam, other.cam)
    shutil.copytree(paths.irn, other.irn)
    num = tiny_cfg(sem_seg={"steps": n, "bg_thres": t, "splits": ["val"], "eval_thresholds": grid_thres})
    make_sem_seg(num, other)
    checked = eval_sem_seg(num, other, ["val"])["val"]
    assert checked["labels"][metric] == pytest.approx(scores[metric][best])
    # and the grid's row of those steps, every threshold: eval-sem-seg's sweep of the stored maps
    row = tune["grid"][str(n)]
    assert set(checked["sweep"]) == set(row)
    for key, figures in row.items():
        assert checked["sweep"][key] == pytest.approx(figures), key
    for name in val.image_ids:  # the run's own labels are those of the choice
        np.testing.assert_array_equal(read_png(paths.sem_seg / f"{name}.png"), read_png(other.sem_seg / f"{name}.png"))
    assert all((paths.sem_seg / f"{name}.png").exists() for name in datasets["train"].image_ids)
    assert eval_sem_seg(cfg, paths, ["val"])["val"]["bg_thres"] == t


def test_edge_mask_chosen_on_val(fake_data):
    """``sem_seg.edge_mask: val`` walks from cam * (1 - boundary) and from the CAM; the choice is
    the best cell over both grids, the labels are those of the choice, and the report lists it."""
    paths, datasets = fake_data
    cfg = tiny_cfg(irn={"epochs": 2}, sem_seg={"steps": "val", "bg_thres": "val", "edge_mask": "val",
                                               "val_steps": [0, 4], "eval_thresholds": [0.3, 0.7],
                                               "splits": ["val"]})
    make_ir_label(tiny_cfg(), paths)
    train_irn(cfg, paths)
    make_sem_seg(cfg, paths)
    tune = json.loads((paths.sem_seg / "tune.json").read_text())
    cells = {(m, int(n), float(t)): r["miou_all"] for m, grid in tune["grids"].items()
             for n, row in grid.items() for t, r in row.items()}
    assert len(cells) == 8
    assert any(cells[("true", n, t)] != cells[("false", n, t)] for n in (0, 4) for t in (0.3, 0.7))
    best = max(cells, key=cells.get)
    assert (str(tune["edge_mask"]).lower(), tune["steps"], tune["bg_thres"]) == best
    assert tune["grid"] == tune["grids"][best[0]]
    other = RunPaths(paths.root.parent / "check_mask")
    shutil.copytree(paths.cam, other.cam)
    shutil.copytree(paths.irn, other.irn)
    num = tiny_cfg(sem_seg={"steps": best[1], "bg_thres": best[2], "edge_mask": best[0] == "true",
                            "splits": ["val"]})
    make_sem_seg(num, other)
    for name in datasets["val"].image_ids:
        np.testing.assert_array_equal(read_png(paths.sem_seg / f"{name}.png"), read_png(other.sem_seg / f"{name}.png"))
    listed = run_thresholds(cfg, paths, (0.5, "test"))["sem_seg.edge_mask"]
    assert listed["value"] is tune["edge_mask"] and listed["source"] == tune["source"]
    assert run_thresholds(num, other, (0.5, "test"))["sem_seg.edge_mask"] == {"value": best[0] == "true",
                                                                              "source": "sem_seg.edge_mask"}


@pytest.mark.parametrize("workers", [0, 2])
def test_fg_threshold_on_val_needs_the_masks(fake_data, monkeypatch, workers):
    """A val image with CAM classes but no mask stops the choice with an error naming it."""
    paths, datasets = fake_data
    val = datasets["val"]
    monkeypatch.setattr(val, "load_mask", lambda i: None)
    cfg = tiny_cfg(num_workers=workers, ir_label={"conf_fg_thres": "val", "crf": {"enabled": False}})
    named = next(n for i, n in enumerate(val.image_ids) if len(load_cam_file(paths.cam / f"{n}.npy")["keys"]))
    with pytest.raises(ValueError, match=f"needs val masks; {named} has none"):
        fg_threshold_on_val(cfg, paths)
