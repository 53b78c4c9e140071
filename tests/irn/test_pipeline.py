"""IRNet training, random-walk pseudo labels, evaluation and panels on tiny synthetic data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

from wsss_fast.engine.files import read_png
from wsss_fast.irn.ir_label import make_ir_label
from wsss_fast.irn.model import load_irnet
from wsss_fast.irn.sem_seg import eval_sem_seg, make_sem_seg, run_shard
from wsss_fast.irn.show import show
from wsss_fast.irn.train import train_irn
import wsss_fast.irn.walk as walk
from wsss_fast.irn.walk import labels_from_soft
from wsss_fast.engine.paths import RunPaths
from wsss_fast.engine.files import load_cam_file, save_cam_file

from .conftest import FakeDataset, assert_one_in_flight, tiny_cfg


def _log(paths):
    return [json.loads(line) for line in (paths.irn / "train.log").read_text().splitlines()]


def test_train_lowers_loss_and_resumes(fake_data):
    paths, _ = fake_data
    make_ir_label(tiny_cfg(), paths)
    # no augmentation and one batch of all 8 images: the same problem every step
    fixed = {"rescale": None, "hflip": False, "batch_size": 8, "lr": 0.05}
    train_irn(tiny_cfg(irn={**fixed, "epochs": 3}), paths)
    assert [r["step"] for r in _log(paths)] == [1, 2, 3]
    (paths.irn / ".done").unlink()
    train_irn(tiny_cfg(irn={**fixed, "epochs": 8}), paths)  # resumes from last.pt at step 3
    log = _log(paths)
    assert [r["step"] for r in log] == list(range(1, 9))
    losses = [r["total"] for r in log]
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses
    assert paths.is_done(paths.irn)
    ckpt = torch.load(paths.irn / "final.pt", weights_only=False)
    net = load_irnet(paths.irn / "final.pt")
    assert ckpt["dp_mean"].shape == (2,) and ckpt["steps"] == 8
    torch.testing.assert_close(net.mean_shift.running_mean, ckpt["dp_mean"])


def test_losses_are_read_on_log_steps_only(fake_data, monkeypatch):
    """train-irn reads its losses (a wait for the GPU) once per train.log line, not every step."""
    import wsss_fast.irn.train as irn_train

    reads = []

    class Reads(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func in (torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.cpu,
                        torch.Tensor.numpy, torch.Tensor.__bool__):
                reads.append(func.__name__)
            return super().__torch_function__(func, types, args, kwargs or {})

    loss = irn_train.irn_loss
    monkeypatch.setattr(irn_train, "irn_loss",
                        lambda *a, **k: {n: v.as_subclass(Reads) for n, v in loss(*a, **k).items()})
    paths, _ = fake_data
    make_ir_label(tiny_cfg(), paths)
    train_irn(tiny_cfg(irn={"epochs": 2, "batch_size": 2, "log_every": 3, "rescale": None}), paths)
    log = _log(paths)
    assert [r["step"] for r in log] == [1, 3, 6, 8]  # 4 steps an epoch: every 3rd, the first and the last
    assert len(reads) == len(log) and all(np.isfinite(r["total"]) for r in log)


@pytest.fixture
def trained(fake_data):
    paths, datasets = fake_data
    cfg = tiny_cfg(irn={"epochs": 1})
    make_ir_label(cfg, paths)
    train_irn(cfg, paths)
    return paths, datasets


def test_sem_seg_outputs_eval_and_show(trained):
    paths, datasets = trained
    cfg = tiny_cfg()
    make_sem_seg(cfg, paths)
    assert paths.is_done(paths.sem_seg)
    for split, ds in datasets.items():
        for i, image_id in enumerate(ds.image_ids):
            png = read_png(paths.sem_seg / f"{image_id}.png")
            rw = np.load(paths.rw / f"{image_id}.npy")
            keys = load_cam_file(paths.cam / f"{image_id}.npy")["keys"]
            assert png.shape == ds.orig and png.dtype == np.uint8
            assert set(np.unique(png)) <= {0, *(keys + 1).tolist()}
            assert rw.dtype == np.float16 and rw.shape == (len(keys), 64, 64)
            if len(keys):
                assert float(rw.max()) == 1.0 and float(rw.min()) >= 0
            else:
                assert (png == 0).all()
            np.testing.assert_array_equal(png, labels_from_soft(rw, keys, 0.25, ds.orig))
    report = eval_sem_seg(cfg, paths)
    saved = json.loads((paths.sem_seg / "eval.json").read_text())
    assert set(saved) == {"train", "val", "test"}
    for split, r in report.items():
        assert {"miou_all", "miou_pos", "dice"} <= set(r["labels"])
        assert 0 <= r["labels"]["miou_all"] <= 1
        assert set(r["sweep"]) == {f"{t:g}" for t in cfg["sem_seg"]["eval_thresholds"]}
        # the sweep at the PNGs' threshold reproduces the PNGs' metrics
        assert r["sweep"]["0.25"]["miou_all"] == pytest.approx(r["labels"]["miou_all"])
        assert r["sweep"]["0.25"]["dice"] == pytest.approx(r["labels"]["dice"])
    show(cfg, paths)
    panels = sorted(paths.figures.glob("irn_*.png"))
    assert len(panels) == 2
    from PIL import Image

    assert Image.open(panels[0]).size[0] > 6 * 64


def positive_of(datasets: dict) -> set[str]:
    return {k for ds in datasets.values() for i, k in enumerate(ds.image_ids) if ds.labels[i].any()}


@pytest.mark.parametrize("choose", [False, True])
def test_images_without_classes_skip_the_network(trained, monkeypatch, choose, device):
    """Only images with classes are read and reach the boundary branch and the walk (in
    make-sem-seg and in its choice of the walk on val); the others get empty maps and
    all-background labels, made on the host (no launched batch holds one)."""
    import wsss_fast.irn.sem_seg as sem_seg

    paths, datasets = trained
    read = []
    for ds in datasets.values():
        monkeypatch.setattr(ds, "load_image",
                            lambda i, ds=ds, load=ds.load_image: read.append(ds.image_ids[i]) or load(i))
    seen = []
    walk_classes = walk._walk_classes
    monkeypatch.setattr(walk, "_walk_classes", lambda model, items, *a, **k: seen.append(
        [it["id"] for it in items]) or walk_classes(model, items, *a, **k))
    launched = []  # the batches that make device work and a copy back: images with classes only
    launch = sem_seg._launch
    monkeypatch.setattr(sem_seg, "_launch", lambda model, items, *a: launched.append(
        [it["id"] for it in items]) or launch(model, items, *a))
    over = {"steps": "val", "val_steps": [0, 4, 8], "bg_thres": "val"} if choose else {}
    make_sem_seg(tiny_cfg(device=device, sem_seg=over), paths)
    assert {k for b in launched for k in b} == positive_of(datasets)
    positive = positive_of(datasets)
    every = {k for ds in datasets.values() for k in ds.image_ids}
    ids = [k for batch in seen for k in batch]
    assert set(ids) == positive and len(ids) == len(positive) + (sum(
        1 for k in datasets["val"].image_ids if k in positive) if choose else 0)
    assert max(len(b) for b in seen) == 3  # sem_seg.batch_size images with classes per batch
    assert set(read) == positive
    for k in every - positive:
        assert np.load(paths.rw / f"{k}.npy").shape == (0, 64, 64) and (read_png(paths.sem_seg / f"{k}.png") == 0).all()


def test_every_batch_runs_inside_the_loader_loop(trained, loop_watch):
    """make-sem-seg walks its last, partial batch inside the loader's last iteration, so a
    profile timing the loader's loop (benchmarks/profile_probes.py) sees all of its work."""
    import wsss_fast.irn.sem_seg as sem_seg

    paths, _ = trained
    watch = loop_watch(sem_seg, sem_seg, "_finish")
    make_sem_seg(tiny_cfg(), paths)  # batch_size 3: 4 train images with classes leave one for the end
    assert watch.calls > 0 and watch.outside == 0


def test_walk_choice_rejects_mask_values_outside_the_classes(trained, monkeypatch):
    """The walk's choice on val counts on the device and checks, once per batch, that every
    mask pixel is a class or ignored: a bad mask raises, naming the image."""
    from wsss_fast.irn.sem_seg import tune_walk

    paths, datasets = trained
    val = datasets["val"]
    load = val.load_mask
    monkeypatch.setattr(val, "load_mask", lambda i: load(i) + 7 * (i == 2))
    with pytest.raises(ValueError, match=f"val image {val.image_ids[2]}: [1-9][0-9]* mask pixels outside"):
        tune_walk(tiny_cfg(sem_seg={"steps": "val", "bg_thres": "val", "val_steps": [0, 2]}), paths, "cpu")


def test_a_batch_is_saved_once_the_next_is_launched(trained, monkeypatch):
    """One batch in flight: make-sem-seg waits for a batch's maps (``_finish``) only after it
    queued the next batch (``_launch``); every batch is finished once, in order."""
    import wsss_fast.irn.sem_seg as sem_seg

    paths, datasets = trained
    calls: list[tuple[str, tuple]] = []
    launch, finish = sem_seg._launch, sem_seg._finish

    def spy_launch(model, items, *args):
        out = launch(model, items, *args)
        calls.append(("launch", tuple(it["id"] for it in items)))
        return out

    def spy_finish(paths, writer, pending):
        calls.append(("finish", tuple(it["id"] for it in pending[0])))
        finish(paths, writer, pending)

    monkeypatch.setattr(sem_seg, "_launch", spy_launch)
    monkeypatch.setattr(sem_seg, "_finish", spy_finish)
    n = len(datasets["train"].image_ids)
    run_shard(tiny_cfg(sem_seg={"batch_size": 1}), str(paths.root), "train", list(range(n)), "cpu",
              show_progress=False)
    assert len(assert_one_in_flight(calls)) >= 3


def test_a_batch_is_launched_without_waiting_for_the_device(device, host_reads, monkeypatch, tmp_path):
    """``_launch`` queues a batch's walk, labels and their copy to the host without a wait (the
    images and CAMs go to a GPU from pinned memory); ``_finish`` writes what the walk and
    :func:`labels_from_soft` give."""
    import wsss_fast.irn.sem_seg as sem_seg
    from wsss_fast.config import load_config
    from wsss_fast.engine.files import BackgroundWriter

    g = torch.Generator().manual_seed(0)
    edge = (torch.rand(2, 8, 10, generator=g) ** 3).to(device)
    monkeypatch.setattr(walk, "_edges", lambda model, x, scales: edge)
    items = [{"image": torch.zeros(3, 32, 40), "size": (32, 40), "orig_size": (45, 50), "id": f"i{b}",
              "keys": np.arange(k, dtype=np.int64) * 2, "cam": torch.rand(k, 8, 10, generator=g)}
             for b, k in enumerate((2, 1))]
    cfg = load_config(None, {"sem_seg": {"radius": 3, "steps": 4, "bg_thres": 0.3, "edge_mask": True}})
    dev = torch.device(device)
    want = walk._walk_soft(None, items, cfg, dev, [4], (True,))[(True, 4)]
    with host_reads(device) as reads:
        pending = sem_seg._launch(None, items, cfg, dev)
    assert reads.count == 0, reads.where
    paths = RunPaths(tmp_path)
    with BackgroundWriter() as writer:
        sem_seg._finish(paths, writer, pending)
    for it, soft in zip(items, want):
        torch.testing.assert_close(torch.from_numpy(np.load(paths.rw / f"{it['id']}.npy")), soft, rtol=0, atol=0)
        np.testing.assert_array_equal(read_png(paths.sem_seg / f"{it['id']}.png"),
                                      labels_from_soft(soft.to(dev).float(), it["keys"], 0.3, (45, 50)))


class TwoClassFake(FakeDataset):
    """The disks of :class:`FakeDataset` split in two classes: 3 left of the centre, 7 right."""

    num_classes = 8
    class_names = [f"c{c}" for c in range(8)]

    def __init__(self, **kw):
        super().__init__(**kw)
        single = self.labels[:, 0].copy()
        self.labels = np.zeros((len(single), 8), np.float32)
        self.labels[:, 3] = self.labels[:, 7] = single

    def _disk(self, i: int) -> np.ndarray:
        yy, xx = np.mgrid[: self.orig[0], : self.orig[1]]
        cy, cx = self._centers[i]
        return ((yy - cy) ** 2 + (xx - cx) ** 2 < (0.22 * self.orig[0]) ** 2) & bool(self.labels[i, 3])

    def load_mask(self, i: int) -> np.ndarray:
        right = np.arange(self.orig[1])[None, :] >= self._centers[i][1]
        return np.where(self._disk(i), np.where(right, 8, 4), 0).astype(np.uint8)

    def load_image(self, i: int) -> np.ndarray:
        return np.stack([(40 + self._noise[i] + 150 * self._disk(i)).astype(np.uint8)] * 3, -1)


def test_sem_seg_two_classes(trained, monkeypatch):
    """Two classes per positive image, keys [3, 7], CAMs made from each class's ground truth:
    the labels are class + 1 (never the channel index + 1) and match the ground truth."""
    import wsss_fast.irn.common as common

    paths, _ = trained
    ds = TwoClassFake(n=6, seed=5, prefix="two")
    monkeypatch.setattr(common, "build_split", lambda cfg, split, paths, train=False: ds)
    w = ds.work
    for i, image_id in enumerate(ds.image_ids):
        keys = np.flatnonzero(ds.labels[i])
        hr, cam = np.zeros((0, w, w)), np.zeros((0, (w + 3) // 4, (w + 3) // 4))
        if len(keys):
            gt = torch.from_numpy(ds.load_mask(i))[None, None]
            hr = torch.nn.functional.interpolate(torch.cat([(gt == k + 1).float() for k in keys], 1),
                                                 size=(w, w), mode="bilinear", align_corners=False)[0]
            hr = ndimage.gaussian_filter(hr.numpy(), (0, 2, 2))
            hr = hr / hr.max()
            cam = torch.nn.functional.interpolate(torch.from_numpy(hr)[None], size=cam.shape[-2:],
                                                  mode="bilinear", align_corners=False)[0].numpy()
        save_cam_file(paths.cam / f"{image_id}.npy", keys, cam, hr)
    cfg = tiny_cfg(sem_seg={"splits": ["train"]})
    make_sem_seg(cfg, paths)
    seen = set()
    for i, image_id in enumerate(ds.image_ids):
        png = read_png(paths.sem_seg / f"{image_id}.png")
        assert set(np.unique(png)) <= {0, 4, 8}
        seen |= set(np.unique(png).tolist())
    assert seen == {0, 4, 8}
    report = eval_sem_seg(cfg, paths)["train"]
    assert report["labels"]["miou_pos"] > 0.5, report["labels"]
    assert report["sweep"]["0.25"]["miou_pos"] == pytest.approx(report["labels"]["miou_pos"])


def test_sharded_equals_single(trained, tmp_path):
    paths, datasets = trained
    cfg = tiny_cfg()
    other = RunPaths(tmp_path / "sharded")
    shutil.copytree(paths.cam, other.cam)
    shutil.copytree(paths.irn, other.irn)
    n = len(datasets["train"].image_ids)
    run_shard(cfg, str(paths.root), "train", list(range(n)), "cpu", show_progress=False)
    for k in range(3):
        run_shard(cfg, str(other.root), "train", list(range(k, n, 3)), "cpu", show_progress=False)
    for image_id in datasets["train"].image_ids:
        a, b = read_png(paths.sem_seg / f"{image_id}.png"), read_png(other.sem_seg / f"{image_id}.png")
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(np.load(paths.rw / f"{image_id}.npy").astype(np.float32),
                                   np.load(other.rw / f"{image_id}.npy").astype(np.float32), atol=2e-3)


def test_torchrun_ranks_split_the_images(trained, tmp_path, monkeypatch):
    """Under torchrun every rank labels only its share, and the step is marked done only when
    the last share is written; together they equal one process's labels."""
    paths, datasets = trained
    cfg = tiny_cfg()
    cfg["sem_seg"]["splits"] = ["train"]
    make_sem_seg(cfg, paths)
    other = RunPaths(tmp_path / "torchrun")
    shutil.copytree(paths.cam, other.cam)
    shutil.copytree(paths.irn, other.irn)
    ids = list(datasets["train"].image_ids)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    make_sem_seg(cfg, other)
    written = sorted(p.stem for p in other.sem_seg.glob("*.png"))
    assert written == sorted(ids[1::2]) and not other.is_done(other.sem_seg)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    make_sem_seg(cfg, other)
    assert other.is_done(other.sem_seg)
    for image_id in ids:
        np.testing.assert_array_equal(read_png(paths.sem_seg / f"{image_id}.png"),
                                      read_png(other.sem_seg / f"{image_id}.png"))


def test_upsampled_walk(trained, tmp_path):
    # sem_seg.upsample = 2: the walk runs on the stride-4 grid of the 2x image; outputs keep
    # the image's size and differ from the plain walk's.
    paths, datasets = trained
    ds = datasets["train"]
    runs = {}
    for up in (1, 2):
        cfg = tiny_cfg()
        cfg["sem_seg"]["upsample"] = up
        runs[up] = RunPaths(tmp_path / f"up{up}")
        shutil.copytree(paths.cam, runs[up].cam)
        shutil.copytree(paths.irn, runs[up].irn)
        run_shard(cfg, str(runs[up].root), "train", list(range(len(ds.image_ids))), "cpu", show_progress=False)
    differs = []
    for image_id in ds.image_ids:
        keys = load_cam_file(paths.cam / f"{image_id}.npy")["keys"]
        rw1, rw2 = (np.load(runs[u].rw / f"{image_id}.npy").astype(np.float32) for u in (1, 2))
        assert rw2.shape == rw1.shape == (len(keys), 64, 64)
        assert read_png(runs[2].sem_seg / f"{image_id}.png").shape == ds.orig
        if len(keys):
            differs.append(float(np.abs(rw1 - rw2).max()))
    assert differs and max(differs) > 1e-2
