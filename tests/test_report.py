"""The evaluation report on tiny fake outputs: structure, values, thresholds, figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "seg"))
from fakes import FakeDataset, fake_builder  # noqa: E402

from wsss_fast.config import load_config  # noqa: E402
from wsss_fast.report import cam_threshold, cam_to_label, evaluate, format_table  # noqa: E402
from wsss_fast.engine.paths import RunPaths  # noqa: E402
from wsss_fast.engine.files import load_cam_file, save_cam_file


def test_cam_to_label():
    hr = np.zeros((2, 4, 4), np.float32)
    hr[0, :2] = 0.9
    hr[1, 2:, :2] = 0.5
    hr[1, 2:, 2:] = 0.1
    lab = cam_to_label({"keys": np.array([3, 7]), "high_res": hr}, 0.2, (4, 4))
    assert lab[:2].tolist() == [[4] * 4] * 2
    assert lab[2:, :2].tolist() == [[8, 8]] * 2 and lab[2:, 2:].max() == 0
    assert cam_to_label({"keys": np.zeros(0), "high_res": np.zeros((0, 4, 4))}, 0.2, (5, 3)).shape == (5, 3)
    # resized bilinearly to the mask size
    assert cam_to_label({"keys": np.array([0]), "high_res": np.ones((1, 4, 4))}, 0.2, (8, 6)).min() == 1


def _outputs(tmp_path, monkeypatch, with_seg=True):
    sets = {s: FakeDataset(6, 1, seed=k, prefix=s) for k, s in enumerate(["val", "test"])}
    monkeypatch.setattr("wsss_fast.data.build_dataset", fake_builder(sets), raising=False)
    cfg = load_config(None, {"evaluate": {"splits": ["val", "test"], "num_figures": 2, "cam_bg_thres": None},
                             "cam": {"bg_thres": 0.5, "eval_thresholds": [0.5]}})
    paths = RunPaths(tmp_path / "run")
    for ds in sets.values():
        for i, name in enumerate(ds.image_ids):
            gt = ds.masks[i]
            h, w = gt.shape
            # CAM at a working resolution of 32 px: right on positives, nothing on negatives
            hr = np.array(Image.fromarray((gt * 255).astype(np.uint8)).resize((32, 32), Image.NEAREST),
                          np.float32)[None] / 255
            keys = np.array([0]) if ds.labels[i, 0] else np.zeros(0, np.int64)
            save_cam_file(paths.cam / f"{name}.npy", keys, hr[:, ::4, ::4], hr if keys.size else hr[:0])
            # IRNet: the GT with its first fg row lost to 255 -> counted as background
            irn = gt.copy()
            irn[h // 4] = np.where(irn[h // 4] > 0, 255, irn[h // 4])
            paths.sem_seg.mkdir(parents=True, exist_ok=True)
            Image.fromarray(irn).save(paths.sem_seg / f"{name}.png")
            if with_seg:
                paths.seg_pred.mkdir(parents=True, exist_ok=True)
                Image.fromarray(gt).save(paths.seg_pred / f"{name}.png")
    (paths.root / "timings.json").write_text(json.dumps({"train-cls": 1.5, "total": 9.0}))
    return cfg, paths, sets


def test_report_structure_and_values(tmp_path, monkeypatch, capsys):
    cfg, paths, sets = _outputs(tmp_path, monkeypatch)
    report = evaluate(cfg, paths)
    on_disk = json.loads(paths.report.read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert set(on_disk["splits"]) == {"val", "test"}
    for split in ("val", "test"):
        steps = on_disk["splits"][split]
        assert set(steps) == {"cam", "irnet", "seg"}
        for r in steps.values():
            assert {"miou_all", "miou_pos", "dice"} <= set(r)
            assert all(0.0 <= r[k] <= 1.0 for k in ("miou_all", "miou_pos", "dice"))
            assert r["n_images"] == 6 and r["n_pos"] == 3
        assert steps["seg"]["miou_all"] == pytest.approx(1.0)  # seg_pred == GT
        assert steps["seg"]["dice"] == pytest.approx(1.0)
        assert steps["irnet"]["miou_pos"] < 1.0  # the lost row is a real error
        assert steps["irnet"]["miou_pos"] < steps["irnet"]["miou_all"]  # negatives are all right
    assert on_disk["timings_s"] == {"train-cls": 1.5, "total": 9.0}
    assert on_disk["cam_bg_thres"] == 0.5 and on_disk["cam_bg_thres_source"].startswith("eval-cam")
    assert on_disk["cam_classes"].startswith("ground-truth")
    env = on_disk["environment"]  # what the figures depend on besides code, config and seed
    assert env["packages"]["torch"] == torch.__version__.split("+")[0]  # the distribution's version
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["cpu"] and "gpu" not in env
    figs = sorted(paths.figures.glob("*.png"))
    assert len(figs) == 2 and all(f.name.startswith("test_") for f in figs)
    im = Image.open(figs[0])
    assert im.size == (5 * 256, 256 + 18)
    # positive images come first
    assert figs[0].stem.split("_", 1)[1] in {sets["test"].image_ids[i] for i in (0, 2, 4)}
    out = capsys.readouterr().out
    assert "mIoU pos" in out and "Segmentation" in out and "IRNet" in out


def test_report_leaves_out_missing_steps(tmp_path, monkeypatch):
    cfg, paths, sets = _outputs(tmp_path, monkeypatch, with_seg=False)
    (paths.sem_seg / f"{sets['val'].image_ids[1]}.png").unlink()
    report = evaluate(cfg, paths)
    assert set(report["splits"]["val"]) == {"cam"}
    assert set(report["splits"]["test"]) == {"cam", "irnet"}
    assert report["missing"]["val"] == {"irnet": 1, "seg": 6}
    assert "not available" in format_table(report)


@pytest.mark.parametrize("drop", [None, "irnet"])
def test_loader_workers_count_every_image_as_one_process_does(tmp_path, monkeypatch, drop):
    """evaluate_split counts the images in num_workers loader processes; the figures (every
    float) and the missing counts are those of one process, with and without a step whose
    outputs are missing from the second image on."""
    import os

    import wsss_fast.report as report

    cfg, paths, sets = _outputs(tmp_path, monkeypatch)
    ds = sets["val"]
    if drop:
        for name in ds.image_ids[1::2]:
            (paths.sem_seg / f"{name}.png").unlink()
    pids = tmp_path / "pids"
    pids.mkdir()
    label = report._step_label
    monkeypatch.setattr(report, "_step_label", lambda *a: (pids / str(os.getpid())).touch() or label(*a))
    one = report.evaluate_split({**cfg, "num_workers": 0}, paths, ds, 0.5, "val")
    assert {int(f.name) for f in pids.iterdir()} == {os.getpid()}
    for f in pids.iterdir():
        f.unlink()
    two = report.evaluate_split({**cfg, "num_workers": 2}, paths, ds, 0.5, "val")
    assert len({int(f.name) for f in pids.iterdir()} - {os.getpid()}) == 2
    assert json.dumps(two, sort_keys=True) == json.dumps(one, sort_keys=True)
    assert one[1] == ({"irnet": 3} if drop else {}) and set(one[0]) == ({"cam", "seg"} if drop else set(report.STEPS))


def test_cam_threshold_sources(tmp_path):
    paths = RunPaths(tmp_path)
    cfg = load_config(None, {"cam": {"bg_thres": 0.3}})
    assert cam_threshold(cfg, paths) == (0.3, "cam.bg_thres")
    paths.cam.mkdir()
    (paths.cam / "eval.json").write_text(json.dumps(
        {"metric": "miou_all", "splits": {"val": {"best": {"threshold": 0.2, "miou_all": 0.5}}}}))
    assert cam_threshold(cfg, paths)[0] == 0.2
    cfg["evaluate"]["cam_bg_thres"] = 0.1
    assert cam_threshold(cfg, paths) == (0.1, "evaluate.cam_bg_thres")


def test_report_uses_threshold_swept_on_val(tmp_path, monkeypatch):
    cfg, paths, sets = _outputs(tmp_path, monkeypatch)
    for ds in sets.values():  # CAMs of 0.5 on the lesion: 0.3 finds it, 0.95 finds nothing
        for name in ds.image_ids:
            cam = load_cam_file(paths.cam / f"{name}.npy")
            save_cam_file(paths.cam / f"{name}.npy", cam["keys"], cam["cam"] * 0.5, cam["high_res"] * 0.5)
    cfg["evaluate"]["cam_bg_thres"] = None
    cfg["cam"]["eval_thresholds"] = [0.95, 0.3]  # the best one last: "take the first" fails
    cfg["cam"]["eval_splits"] = ["val", "test"]  # the report sweeps val only, whatever this says
    report = evaluate(cfg, paths)
    swept = json.loads((paths.cam / "eval.json").read_text())
    assert set(swept["splits"]) == {"val"}
    assert [r["threshold"] for r in swept["splits"]["val"]["thresholds"]] == [0.95, 0.3]
    assert swept["splits"]["val"]["best"]["threshold"] == 0.3
    assert report["cam_bg_thres"] == 0.3 and report["cam_bg_thres_source"].startswith("eval-cam")
    assert report["splits"]["test"]["cam"]["miou_all"] > 0.9  # at 0.3 (0.95 would find no lesion)


def test_cam_classes_names_the_protocol():
    from wsss_fast.report import cam_classes

    assert cam_classes(load_config(None)).startswith("ground-truth")
    text = cam_classes(load_config(None, {"cam": {"use_labels": False, "pred_threshold": 0.7}}))
    assert text.startswith("predicted") and "0.7" in text


def test_summarize_runs_mean_std_and_paired_gains():
    from wsss_fast.report import format_summary, summarize_runs

    def rep(cam, irn, seg):
        return {"splits": {"test": {"cam": {"miou_all": cam, "miou_pos": cam / 2, "dice": cam},
                                    "irnet": {"miou_all": irn, "miou_pos": irn / 2, "dice": irn},
                                    "seg": {"miou_all": seg, "miou_pos": seg / 2, "dice": seg}}},
                "thresholds": {"cam.bg_thres": {"value": cam, "source": "x"}}}

    # run b has the lowest CAM and the lowest IRNet: unpaired, IRNet - CAM would look small;
    # paired it is +0.1, +0.1 and -0.05
    s = summarize_runs({"a": rep(0.5, 0.6, 0.7), "b": rep(0.3, 0.4, 0.35), "c": rep(0.6, 0.55, 0.6)})
    g = s["gains"]["test"]["irnet-cam"]["miou_all"]
    assert g["values"] == pytest.approx([0.1, 0.1, -0.05]) and g["positive"] == 2 and g["n"] == 3
    assert g["mean"] == pytest.approx(np.mean([0.1, 0.1, -0.05]))
    assert g["std"] == pytest.approx(np.std([0.1, 0.1, -0.05], ddof=1))
    assert s["gains"]["test"]["seg-irnet"]["miou_pos"]["values"] == pytest.approx([0.05, -0.025, 0.025])
    assert s["splits"]["test"]["cam"]["miou_all"]["mean"] == pytest.approx(np.mean([0.5, 0.3, 0.6]))
    assert s["splits"]["test"]["seg"]["dice"]["std"] == pytest.approx(np.std([0.7, 0.35, 0.6], ddof=1))
    assert s["thresholds"]["b"]["cam.bg_thres"]["value"] == 0.3
    assert s["environments"] == {"a": None, "b": None, "c": None}  # reports without one
    text = format_summary(s)
    assert "| test | IRNet − CAM (Grad-CAM++) | 5.00 ± " in text and "(2/3)" in text
