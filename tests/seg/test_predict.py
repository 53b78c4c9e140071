"""predict-seg with a stub network of known logits: flip TTA, ``seg.threshold``, saved
probabilities, arg-max of several classes, and resume (existing predictions are kept)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from fakes import FakeDataset, fake_builder  # noqa: E402

from wsss_fast.config import load_config  # noqa: E402
from wsss_fast.engine.paths import RunPaths  # noqa: E402
from wsss_fast.seg.infer import predict_seg  # noqa: E402

# logits = A_c * col^2 + B_c * row + C_c + D_c * lesion: not left-right symmetric, so the
# flipped image's prediction must be flipped back before averaging
COEF = {1: np.array([[3.0, 1.0, -1.2, 3.0]]),
        3: np.array([[0.0, 0.0, 0.0, 0.0], [3.0, 0.5, -1.5, -1.0], [-2.0, 1.5, 0.2, 3.0]])}


def _logits(lesion: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """[C, H, W] logits of a lesion mask [H, W] (float64)."""
    h, w = lesion.shape
    col = np.linspace(0, 1, w)[None, :] ** 2
    row = np.linspace(0, 1, h)[:, None]
    return np.stack([a * col + b * row + c + d * lesion for a, b, c, d in coef])


class StubNet(torch.nn.Module):
    """The logits of :func:`_logits`; the lesion is where the normalized red channel is > 0
    (FakeDataset: 200 on the lesion, 60 elsewhere). Counts the images it sees."""

    def __init__(self, coef: np.ndarray):
        super().__init__()
        self.coef = coef
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        lesion = (x[:, 0] > 0).double().cpu().numpy()
        return torch.from_numpy(np.stack([_logits(m, self.coef) for m in lesion])).float().to(x.device)


def _probs(lesion: np.ndarray, coef: np.ndarray, flip: bool) -> np.ndarray:
    """Expected [C, H, W] probabilities, computed in float64 from the formula."""
    def act(z):
        if z.shape[0] == 1:
            return 1 / (1 + np.exp(-z))
        e = np.exp(z - z.max(0))
        return e / e.sum(0)

    p = act(_logits(lesion, coef))
    if flip:  # the flipped image's logits, flipped back
        p = 0.5 * (p + act(_logits(lesion[:, ::-1], coef))[..., ::-1])
    return p


@pytest.fixture
def setup(tmp_path, monkeypatch):
    def make(n_out: int, n: int = 4, **seg):
        sets = {s: FakeDataset(n, 1, seed=k, prefix=s) for k, s in enumerate(["val", "test"])}
        monkeypatch.setattr("wsss_fast.data.build_dataset", fake_builder(sets), raising=False)
        net = StubNet(COEF[n_out])
        monkeypatch.setattr("wsss_fast.seg.infer.load_seg_model", lambda cfg, paths, device: net)
        cfg = load_config(None, {"device": "cpu", "num_workers": 0, "dataset": {"image_size": None},
                                 "seg": {"image_size": None, **seg}, "evaluate": {"splits": ["val", "test"]}})
        return cfg, RunPaths(tmp_path / "run"), sets, net
    return make


@pytest.mark.parametrize("n_out,seg", [(1, {"image_size": 40, "eval_batch_size": 3, "threshold": 0.6}),
                                       (1, {"image_size": None, "threshold": 0.6}),
                                       (3, {"image_size": 40, "eval_batch_size": 4})])
def test_predict_files_are_the_bytes_of_each_images_prediction(setup, n_out, seg):
    """Batched predictions (last batch partial, sizes differing within a batch): every PNG holds
    the bytes write_png gives for that image predicted on its own; ``_prob.png`` for binary only."""
    from wsss_fast.engine.files import write_png
    from wsss_fast.seg.data import ImageDataset, eval_transform
    from wsss_fast.seg.infer import predict_probs, probs_to_label

    cfg, paths, sets, net = setup(n_out, n=7, tta_flip=True, save_probs=True, **seg)
    predict_seg(cfg, paths)
    ref = paths.root / "ref"
    thr = 0.5 if n_out > 1 else seg["threshold"]
    for ds in sets.values():
        for i, name in enumerate(ds.image_ids):
            item = ImageDataset(ds, eval_transform(cfg))[i]
            p = predict_probs(net, item["image"][None], flip=True)
            if p.shape[-2:] != ds.sizes[i]:
                p = torch.nn.functional.interpolate(p, size=ds.sizes[i], mode="bilinear", align_corners=False)
            p = p[0]
            files = {f"{name}.png": probs_to_label(p, thr).numpy()}
            if n_out == 1:
                files[f"{name}_prob.png"] = (p[0].clamp(0, 1) * 255).round().byte().numpy()
            for f, arr in files.items():
                write_png(arr, ref / f)
                assert (paths.seg_pred / f).read_bytes() == (ref / f).read_bytes(), f
    names = sorted(p.name for p in paths.seg_pred.glob("*.png"))
    assert names == sorted(p.name for p in ref.glob("*.png")) and len(names) == 14 * (2 if n_out == 1 else 1)


def test_batches_are_saved_inside_the_loader_loop_one_in_flight(setup, loop_watch, monkeypatch):
    """predict-seg waits for a batch's maps (``_finish``) after it queued the next batch's copy,
    and for the last one inside the loader's last iteration, so a profile timing the loader's
    loop (benchmarks/profile_probes.py) sees all of its work."""
    import wsss_fast.seg.infer as infer

    cfg, paths, _, _ = setup(1, n=7, image_size=40, eval_batch_size=3, threshold=0.5)
    events: list[str] = []
    copy = infer.HostCopy
    monkeypatch.setattr(infer, "HostCopy", lambda maps: events.append("launch") or copy(maps))
    watch = loop_watch(infer, infer, "_finish")
    counted = infer._finish
    monkeypatch.setattr(infer, "_finish", lambda *a: events.append("finish") or counted(*a))
    predict_seg(cfg, paths)
    assert watch.calls == 6 and watch.outside == 0
    assert events == ["launch", "launch", "finish", "launch", "finish", "finish"] * 2  # 7 images, 3 a batch, 2 splits


def test_batches_reach_a_gpu_from_pinned_memory(setup, device, monkeypatch):
    """On CUDA every loader of predict-seg (the threshold's choice on val, then each split) gives
    pinned batches, whose copies to the GPU are queued, not waited for; on the CPU none is pinned."""
    import wsss_fast.seg.infer as infer

    cfg, paths, _, _ = setup(1, image_size=40, eval_batch_size=2, threshold="val")
    cfg["device"] = device
    pins, real = [], infer._loader

    def spy(*args, **kwargs):
        loader = real(*args, **kwargs)
        pins.append(loader.pin_memory)
        return loader

    monkeypatch.setattr(infer, "_loader", spy)
    predict_seg(cfg, paths)
    assert pins == [device == "cuda"] * 3 and (paths.seg_pred / ".done").exists()


@pytest.mark.parametrize("flip", [True, False])
def test_predict_binary_threshold_flip_and_probs(setup, flip):
    cfg, paths, sets, net = setup(1, tta_flip=flip, threshold=0.7, save_probs=True)
    # resume: an existing prediction is kept and its image is not run again
    kept = sets["val"].image_ids[1]
    paths.seg_pred.mkdir(parents=True)
    Image.fromarray(np.full(sets["val"].sizes[1], 9, np.uint8)).save(paths.seg_pred / f"{kept}.png")
    predict_seg(cfg, paths)
    assert paths.is_done(paths.seg_pred)
    assert net.seen == (2 if flip else 1) * (len(sets["val"]) + len(sets["test"]) - 1)
    assert (np.array(Image.open(paths.seg_pred / f"{kept}.png")) == 9).all()
    assert not (paths.seg_pred / f"{kept}_prob.png").exists()
    mid = unflipped = 0
    for split, ds in sets.items():
        for i, name in enumerate(ds.image_ids):
            if name == kept:
                continue
            p = _probs(ds.masks[i] > 0, COEF[1], flip)[0]
            assert np.abs(p - 0.7).min() > 1e-5  # no float32 tie with the threshold
            pred = np.array(Image.open(paths.seg_pred / f"{name}.png"))
            np.testing.assert_array_equal(pred, (p > 0.7).astype(np.uint8))
            prob = np.array(Image.open(paths.seg_pred / f"{name}_prob.png")).astype(np.int64)
            tie = np.abs(p * 255 % 1 - 0.5) < 1e-4  # float32 may round these either way
            assert (np.abs(prob - np.round(p * 255)) <= tie).all()
            mid += int(((p > 0.5) & (p <= 0.7)).sum())  # pixels where the threshold decides
            unflipped += int(((_probs(ds.masks[i] > 0, COEF[1], False)[0] > 0.7) != (p > 0.7)).sum())
    assert mid > 50 and (unflipped > 50 or not flip)


def test_predict_multiclass_argmax_with_flip(setup):
    cfg, paths, sets, _ = setup(3, tta_flip=True, save_probs=True)
    predict_seg(cfg, paths)
    labels = set()
    for split, ds in sets.items():
        for i, name in enumerate(ds.image_ids):
            p = _probs(ds.masks[i] > 0, COEF[3], True)
            top2 = np.sort(p, axis=0)[-2:]
            tie = top2[1] - top2[0] < 1e-5  # float32 may pick either class there
            pred = np.array(Image.open(paths.seg_pred / f"{name}.png"))
            assert ((pred == p.argmax(0)) | tie).all() and tie.sum() < 5
            assert not (paths.seg_pred / f"{name}_prob.png").exists()  # binary task only
            labels |= set(np.unique(pred).tolist())
    assert labels == {0, 1, 2}


def test_threshold_sweep_on_val_is_the_same_for_any_batch_size(setup):
    """The val sweep is counted on the device and copied once per batch: batches of 3 (the last
    partial) give every threshold the figures of one image at a time."""
    grid = [0.6, 0.93, 0.999, 0.2]
    sweeps = []
    for bs in (1, 3):
        cfg, paths, _, _ = setup(1, n=7, image_size=40, eval_batch_size=bs, tta_flip=True, threshold="val",
                                 eval_thresholds=grid)
        paths = RunPaths(paths.root.parent / f"bs{bs}")
        predict_seg(cfg, paths)
        sweeps.append(json.loads((paths.seg_pred / "threshold.json").read_text())["sweep"])
    assert sweeps[0] == sweeps[1] and len({json.dumps(v, sort_keys=True) for v in sweeps[0].values()}) > 1


@pytest.mark.parametrize("metric", ["miou_all", "dice"])
def test_threshold_chosen_on_val(setup, metric):
    """``seg.threshold: val``: the best of ``seg.eval_thresholds`` on val by ``seg.eval_metric``
    (computed here from the stub's known probabilities), then applied to every split."""
    from wsss_fast.metrics import SegEvaluator

    grid = [0.6, 0.93, 0.999, 0.2]  # not sorted: "take the first / the last" must not pass
    cfg, paths, sets, net = setup(1, tta_flip=False, threshold="val", eval_thresholds=grid, eval_metric=metric)
    predict_seg(cfg, paths)
    scores = {}
    for t in grid:
        ev = SegEvaluator(2)
        for i in range(len(sets["val"])):
            p = _probs(sets["val"].masks[i] > 0, COEF[1], False)[0]
            ev.add((p > t).astype(np.uint8), sets["val"].load_mask(i), bool(sets["val"].labels[i].any()))
        scores[t] = ev.result()[metric]
    best = max(grid, key=lambda t: scores[t])
    assert len(set(np.round(list(scores.values()), 9))) > 1 and best not in (grid[0], grid[-1])
    chosen = json.loads((paths.seg_pred / "threshold.json").read_text())
    assert chosen["threshold"] == best and chosen["metric"] == metric
    assert chosen["sweep"][f"{best:g}"][metric] == pytest.approx(scores[best])
    for split, ds in sets.items():
        for i, name in enumerate(ds.image_ids):
            p = _probs(ds.masks[i] > 0, COEF[1], False)[0]
            np.testing.assert_array_equal(np.array(Image.open(paths.seg_pred / f"{name}.png")),
                                          (p > best).astype(np.uint8))
    assert net.seen == 2 * len(sets["val"]) + len(sets["test"])  # val once to choose, once to write
