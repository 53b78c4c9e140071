"""make-cam / eval-cam on a tiny synthetic SIIM set: file format, resume, shards, threshold sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_fast.cam import CAMExtractor
from wsss_fast.cam.make import eval_cam, make_cam, predict_from_cam, shard_of
from wsss_fast.config import load_config
from wsss_fast.data import WSSSDataset, build_dataset
from wsss_fast.cls.model import Classifier, classifier_kwargs
from wsss_fast.engine.paths import RunPaths
from wsss_fast.engine.files import atomic_torch_save, load_cam_file, save_cam_file

ORIG, WORK = 48, 32  # original image size, working resolution


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def make_cfg(data_root, *overrides: str) -> dict:
    return load_config(None, [
        "device=cpu", "num_workers=0", "seed=0", "dataset.name=synthetic", f"dataset.root={data_root}",
        f"dataset.image_size={WORK}", "dataset.synthetic.num_images=12", f"dataset.synthetic.image_size={ORIG}",
        "dataset.split_counts={train: [2, 2], val: [1, 1], test: [1, 1]}",
        "cls.arch=resnet18", "cls.head_channels=8", "cls.dropblock.block_size=3",
        "cam.scales=[1.0,0.5]", "cam.flip=true", "cam.batch_size=4", *overrides])


def write_checkpoint(cfg: dict, paths: RunPaths, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    model = Classifier(**classifier_kwargs(cfg, load_pretrained=False)).eval()
    atomic_torch_save({"epoch": 1, "model": model.state_dict(), "f1": 0.0, "arch": "resnet18",
                       "model_kwargs": classifier_kwargs(cfg, load_pretrained=False), "class_names": []},
                      paths.cls / "best.pt")
    return model


def test_make_cam_files(tmp_path, data_root):
    cfg = make_cfg(data_root)
    paths = RunPaths(tmp_path)
    model = write_checkpoint(cfg, paths)
    make_cam(cfg, paths)
    assert paths.is_done(paths.cam)
    h4 = (WORK + 3) // 4
    n_pos = 0
    for split in ("train", "val", "test"):
        ds = build_dataset(cfg, split, paths, train=False)
        assert len(ds)
        for i, image_id in enumerate(ds.image_ids):
            d = load_cam_file(paths.cam / f"{image_id}.npy")
            assert set(d) == {"keys", "cam", "high_res", "raw"}
            keys = np.flatnonzero(ds.labels[i])  # ground-truth positive classes, as IRNet
            np.testing.assert_array_equal(d["keys"], keys)
            assert d["keys"].dtype == np.int64
            k = len(keys)
            n_pos += k
            assert d["cam"].dtype == d["high_res"].dtype == d["raw"].dtype == np.float16
            assert d["cam"].shape == (k, h4, h4) and d["raw"].shape == (k, h4, h4)
            assert d["high_res"].shape == (k, WORK, WORK)  # working resolution, not the original 48
            if k:
                assert d["cam"].min() >= 0 and d["cam"].max() <= 1 and d["high_res"].max() <= 1
    assert n_pos >= 4
    # the file holds exactly what the extractor gives for that image
    ds = build_dataset(cfg, "train", paths, train=False)
    i = int(np.flatnonzero(ds.labels[:, 0])[0])
    item = ds[i]
    x, label = item["image"][None], item["label"][None]
    ref = CAMExtractor(model, "head")(x, label, scales=[1.0, 0.5], flip=True)
    d = load_cam_file(paths.cam / f"{item['image_id']}.npy")
    torch.testing.assert_close(torch.from_numpy(d["high_res"]).float(), ref.high_res.float(), atol=2e-3, rtol=1e-2)
    # raw: the sum over the scales of resize(maps(x_s) + maps(flip(x_s)).flip), from one-scale layer maps
    layer = CAMExtractor(model, "head").layer_cams
    raw = 0
    for s in (1.0, 0.5):
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bicubic", antialias=True)
        maps = layer(xs, label).maps + layer(xs.flip(-1), label).maps.flip(-1)
        raw = raw + F.interpolate(maps, size=(h4, h4), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(torch.from_numpy(d["raw"]).float(), raw, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("overrides", [(), ("cam.save_raw=false", "cam.batch_size=3", "cam.use_labels=false"),
                                       ("cam.amp=true",), ("cam.batch_size=2",), ("dataset.image_size=null",)])
def test_make_cam_files_are_the_bytes_of_each_images_maps(tmp_path, data_root, overrides, monkeypatch):
    """Every file holds the bytes save_cam_file writes for that image's own slice of the
    extractor's batch result, fp16, with ``raw`` only when ``cam.save_raw`` (``cam.amp`` is for
    CUDA: the CPU ignores it). The batches are runs of ``cam.batch_size`` images in order; with
    ground-truth labels only images with a class enter them, and the others' files are the bytes
    of what the extractor gives an image without classes, though the network never sees them."""
    from wsss_fast.cls.model import load_classifier

    cfg = make_cfg(data_root, *overrides)
    run, ref = RunPaths(tmp_path / "run"), RunPaths(tmp_path / "ref")
    write_checkpoint(cfg, run)
    seen = []
    call = CAMExtractor.__call__
    monkeypatch.setattr(CAMExtractor, "__call__", lambda self, images, *a, **k: seen.append(
        images.shape[0]) or call(self, images, *a, **k))
    read = []  # the images the loader decoded
    getitem = WSSSDataset.__getitem__
    monkeypatch.setattr(WSSSDataset, "__getitem__", lambda self, i: read.append(self.image_ids[i]) or getitem(self, i))
    make_cam(cfg, run)
    monkeypatch.undo()
    model = load_classifier(run.cls / "best.pt")
    ext = CAMExtractor(model, model.cam_layer)
    bs, save_raw, use_labels = (int(cfg["cam"][k]) for k in ("batch_size", "save_raw", "use_labels"))
    n_files = n_empty = 0
    batches = []
    for split in ("train", "val", "test"):
        ds = build_dataset(cfg, split, run, train=False)
        every = [ds[i] for i in range(len(ds))]
        ran = [it for it in every if not use_labels or it["label"].any()]
        for it in every:  # the extractor's own result for the image alone, without its classes
            if any(it is r for r in ran):
                continue
            res = ext(it["image"][None], torch.zeros_like(torch.as_tensor(it["label"]))[None], scales=[1.0, 0.5],
                      flip=True, allow_empty=True)
            d = res.per_image(numpy=True, fields=("keys", "cam", "high_res") + ("raw",) * save_raw)[0]
            save_cam_file(ref.cam / f"{it['image_id']}.npy", d["keys"], d["cam"], d["high_res"],
                          **({"raw": d["raw"]} if save_raw else {}))
            n_empty += 1
        for start in range(0, len(ran), bs):
            items = ran[start:start + bs]
            batches.append(len(items))
            labels = torch.stack([torch.as_tensor(it["label"]) for it in items]) if use_labels else None
            res = ext(torch.stack([it["image"] for it in items]), labels, scales=[1.0, 0.5], flip=True,
                      threshold=0.5, allow_empty=True)
            for j, it in enumerate(items):
                sel = res.image_index == j
                maps = {k: getattr(res, f)[sel].half().numpy() for k, f in
                        [("cam", "cams"), ("high_res", "high_res")] + [("raw", "raw")] * save_raw}
                save_cam_file(ref.cam / f"{it['image_id']}.npy", res.keys[sel].numpy(), **maps)
                n_empty += not sel.any()
        for it in every:
            name = f"{it['image_id']}.npy"
            assert (run.cam / name).read_bytes() == (ref.cam / name).read_bytes(), (split, name)
            n_files += 1
    assert n_files == len(list(run.cam.glob("*.npy")))
    assert seen == batches  # the network ran on these batches only
    assert 0 < n_empty < n_files or not use_labels  # ground truth: negatives have no maps
    if use_labels:
        assert sum(seen) == n_files - n_empty
        assert len(read) == sum(seen)  # an image without a class is not even read
    else:
        assert len(read) == n_files


def test_every_batch_runs_inside_the_loader_loop(tmp_path, data_root, loop_watch):
    """make-cam runs its last, partial batch, and waits for its maps, inside the loader's last
    iteration, so a profile timing the loader's loop (benchmarks/profile_probes.py) sees all
    of its work although one batch is in flight."""
    import wsss_fast.cam.make as make

    cfg = make_cfg(data_root, "cam.batch_size=3")  # 2 train images with classes: one partial batch
    paths = RunPaths(tmp_path)
    write_checkpoint(cfg, paths)
    watch = loop_watch(make, make, "_finish")
    make_cam(cfg, paths)
    assert watch.calls > 0 and watch.outside == 0


@pytest.mark.parametrize("size", [(32, 32), (30, 45)])
def test_no_maps_is_what_the_extractor_gives_an_image_without_classes(data_root, size):
    from wsss_fast.cam.result import PER_IMAGE_FIELDS, no_maps

    cfg = make_cfg(data_root)
    torch.manual_seed(0)
    model = Classifier(**classifier_kwargs(cfg, load_pretrained=False)).eval()
    res = CAMExtractor(model, model.cam_layer)(torch.rand(2, 3, *size), torch.zeros(2, 1), scales=[1.0, 0.5],
                                                 flip=True, allow_empty=True)
    want = res.per_image(numpy=True)[1]
    got = no_maps(size, PER_IMAGE_FIELDS)
    assert list(got) == list(PER_IMAGE_FIELDS)
    for k in PER_IMAGE_FIELDS:
        assert (got[k].shape, got[k].dtype) == (want[k].shape, want[k].dtype), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_make_cam_amp_on_cuda_is_close_to_float32(tmp_path, data_root):
    """``cam.amp`` on CUDA: the same files up to bfloat16's precision (and TF32's, without it)."""
    runs = {}
    for amp in (False, True):
        cfg = make_cfg(data_root, "device=cuda", f"cam.amp={str(amp).lower()}")
        runs[amp] = RunPaths(tmp_path / str(amp))
        write_checkpoint(cfg, runs[amp])
        make_cam(cfg, runs[amp])
    names = sorted(p.name for p in runs[False].cam.glob("*.npy"))
    assert names == sorted(p.name for p in runs[True].cam.glob("*.npy")) and names
    for name in names:
        a, b = load_cam_file(runs[False].cam / name), load_cam_file(runs[True].cam / name)
        np.testing.assert_array_equal(a["keys"], b["keys"])
        for k in ("cam", "high_res"):
            assert np.abs(a[k].astype(np.float32) - b[k].astype(np.float32)).max(initial=0.0) <= 0.05, (name, k)


def test_make_cam_resumes_and_shards(tmp_path, data_root):
    fast = ("cam.method=cam", "cam.scales=[1.0]", "cam.flip=false", "cam.save_raw=false")
    cfg = make_cfg(data_root, *fast)
    paths = RunPaths(tmp_path)
    write_checkpoint(cfg, paths)
    ids = [k for s in ("train", "val", "test") for k in build_dataset(cfg, s, paths, train=False).image_ids]
    # a file that already exists is kept (resume), even when its content differs
    sentinel = paths.cam / f"{ids[0]}.npy"
    save_cam_file(sentinel, np.zeros(0, np.int64), np.zeros((0, 8, 8)), np.zeros((0, WORK, WORK)))
    before = sentinel.read_bytes()
    make_cam(make_cfg(data_root, *fast, "cam.num_shards=2", "cam.shard_index=0"), paths)
    first = {p.stem for p in paths.cam.glob("*.npy")}
    assert not paths.is_done(paths.cam)  # shard 1 is still missing
    assert sentinel.read_bytes() == before
    assert 1 < len(first) < len(ids)
    make_cam(make_cfg(data_root, *fast, "cam.num_shards=2", "cam.shard_index=1"), paths)
    assert {p.stem for p in paths.cam.glob("*.npy")} == set(ids)
    assert paths.is_done(paths.cam)
    assert "raw" not in load_cam_file(paths.cam / f"{ids[1]}.npy")
    mtimes = {p: p.stat().st_mtime_ns for p in paths.cam.glob("*.npy")}
    make_cam(cfg, paths)  # nothing left to do
    assert {p: p.stat().st_mtime_ns for p in paths.cam.glob("*.npy")} == mtimes
    with pytest.raises(ValueError, match="shard_index"):
        shard_of(make_cfg(data_root, "cam.num_shards=2", "cam.shard_index=2"))


def test_make_cam_needs_checkpoint(tmp_path, data_root):
    with pytest.raises(FileNotFoundError, match="best.pt"):
        make_cam(make_cfg(data_root), RunPaths(tmp_path))


def test_shard_from_torchrun_env(monkeypatch, data_root):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert shard_of(make_cfg(data_root)) == (1, 3)
    assert shard_of(make_cfg(data_root, "cam.num_shards=4", "cam.shard_index=2")) == (2, 4)


def test_predict_from_cam():
    maps = torch.tensor([[[0.9, 0.2, 0.3]], [[0.5, 0.6, 0.3]]])  # K=2, H=1, W=3
    low, high = predict_from_cam(maps, np.array([3, 7]), [0.25, 0.3])
    assert low.tolist() == [[4, 8, 4]]  # keys + 1; class 3 wins the tie at the last pixel
    assert high.tolist() == [[4, 8, 0]]  # a tie with the threshold is background
    (empty,) = predict_from_cam(torch.zeros(0, 2, 2), np.zeros(0, np.int64), [0.1])
    assert empty.dtype == torch.uint8 and empty.shape == (2, 2) and not empty.any()


def test_eval_cam_threshold_sweep(tmp_path, data_root):
    # working resolution = original here, so the maps can match the ground truth exactly
    cfg = make_cfg(data_root, f"dataset.image_size={ORIG}", "cam.eval_splits=[val, test]",
                   "cam.eval_thresholds=[0.1, 0.3, 0.5, 0.7]")
    paths = RunPaths(tmp_path)
    for split in ("val", "test"):
        ds = build_dataset(cfg, split, paths, train=False)
        for i, image_id in enumerate(ds.image_ids):
            gt = torch.from_numpy(ds.load_mask(i).astype(np.float32))
            if ds.labels[i, 0]:
                ring = F.max_pool2d(gt[None, None], 7, 1, 3)[0, 0] - gt  # a halo around the lesion
                hr = (0.6 * gt + 0.4 * ring)[None]
                save_cam_file(paths.cam / f"{image_id}.npy", np.array([0]), hr[:, ::4, ::4].numpy(), hr.numpy())
            else:
                save_cam_file(paths.cam / f"{image_id}.npy", np.zeros(0, np.int64),
                              np.zeros((0, 12, 12)), np.zeros((0, ORIG, ORIG)))
    report = eval_cam(cfg, paths)
    saved = json.loads((paths.cam / "eval.json").read_text())
    assert saved["metric"] == "miou_all" and set(saved["splits"]) == {"val", "test"}
    for split in ("val", "test"):
        rows = {r["threshold"]: r for r in report["splits"][split]["thresholds"]}
        assert rows[0.5]["miou_all"] == pytest.approx(1.0) and rows[0.5]["dice"] == pytest.approx(1.0)
        assert rows[0.3]["miou_all"] < 0.99 and rows[0.1]["miou_all"] == pytest.approx(rows[0.3]["miou_all"])
        assert rows[0.7]["miou_pos"] < 0.6  # everything background
        assert report["splits"][split]["best"]["threshold"] == 0.5
        assert saved["splits"][split]["best"]["threshold"] == 0.5
        n = len(build_dataset(cfg, split, paths, train=False))
        assert rows[0.5]["n_images"] == report["splits"][split]["n_images"] == n
    # missing maps and bad options are clear errors
    next(paths.cam.glob("*.npy")).unlink()
    with pytest.raises(FileNotFoundError, match="make-cam"):
        eval_cam(cfg, paths)
    with pytest.raises(ValueError, match="eval_metric"):
        eval_cam(make_cfg(data_root, "cam.eval_metric=f1"), paths)


def test_cli_train_make_eval(tmp_path, data_root):
    from wsss_fast.cli import main as cli

    config = tmp_path / "tiny.yaml"
    config.write_text("cls:\n  epochs: 1\n  batch_size: 4\n  amp: false\n")
    out = tmp_path / "run"
    common = ["--config", str(config), "--out", str(out), "device=cpu", "num_workers=0",
              "dataset.name=synthetic", f"dataset.root={data_root}", f"dataset.image_size={WORK}",
              "dataset.synthetic.num_images=12", f"dataset.synthetic.image_size={ORIG}",
              "dataset.split_counts={train: [2, 2], val: [1, 1], test: [1, 1]}",
              "cls.arch=resnet18", "cls.head_channels=8", "cls.dropblock.block_size=3"]
    assert cli.main(["train-cls", *common]) == 0
    paths = RunPaths(out)
    for name in ("last.pt", "best.pt", "train.log", ".done"):
        assert (paths.cls / name).exists(), name
    assert paths.config.exists() and paths.split.exists()
    assert cli.main(["make-cam", *common, "cam.method=cam", "cam.scales=[1.0]", "cam.flip=false"]) == 0
    assert paths.is_done(paths.cam)
    assert cli.main(["eval-cam", *common, "cam.eval_thresholds=[0.2,0.4]"]) == 0
    report = json.loads((paths.cam / "eval.json").read_text())
    assert [r["threshold"] for r in report["splits"]["val"]["thresholds"]] == [0.2, 0.4]


@pytest.mark.parametrize("command,keys", [
    ("train-cls", ["cls.dropblock.place", "cls.resume", "sampler.neg_pos_ratio", "torchrun"]),
    ("make-cam", ["cam.num_shards", "cam.scales", "cam.checkpoint"]),
    ("eval-cam", ["cam.eval_thresholds", "cam.eval_metric"]),
])
def test_cli_help_lists_options(command, keys, capsys):
    from wsss_fast.cli import main as cli

    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for key in keys + ["--config", "--out", "key.sub=value"]:
        assert key in text, key


def test_cam_inputs_give_sizes_without_reading_and_check_them(data_root):
    """With ground-truth labels an image without a class is not read: its working size comes from
    dataset.image_size (or its stored size); an image read at another size than that is an error."""
    from wsss_fast.cam.make import _CamInputs

    class Stub:
        image_ids, labels = ["pos", "neg"], np.array([[1.0], [0.0]], np.float32)

        asked = 0  # original_size calls (a file header read, or a decode)

        def original_size(self, i):
            Stub.asked += 1
            return (40, 50)

        def __getitem__(self, i):
            return {"image_id": self.image_ids[i], "image": torch.zeros(3, 30, 30), "orig_size": (40, 50),
                    "label": torch.from_numpy(self.labels[i])}

    fixed = _CamInputs(make_cfg(data_root), Stub(), [1, 0], use_labels=True)
    assert fixed[0] == {"image_id": "neg", "size": (WORK, WORK)} and Stub.asked == 0  # nothing read
    with pytest.raises(ValueError, match=r"image pos is \(30, 30\) after the data set's transform, not \(32, 32\)"):
        fixed[1]
    stored = _CamInputs(make_cfg(data_root, "dataset.image_size=null"), Stub(), [1, 0], use_labels=True)
    assert stored[0]["size"] == (40, 50) and Stub.asked == 1
    with pytest.raises(ValueError, match="image neg is"):  # without the labels every image is read
        _CamInputs(make_cfg(data_root), Stub(), [1], use_labels=False)[0]
