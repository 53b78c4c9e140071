"""Step 3 after crashes and with AMP: a crash in the middle of an epoch resumes (from the
per-epoch ``last.pt``, with the per-epoch seeding) to the uninterrupted run's weights; a crash
while predict-seg writes a PNG leaves no truncated file; ``seg.amp`` runs float16 autocast with
a GradScaler whose state is saved and restored on CUDA, and is ignored on the CPU."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from fakes import FakeDataset, fake_builder  # noqa: E402
from faults import CrashMidWrite, crash_mid_write, files_in  # noqa: E402

import wsss_fast.seg.train as seg_train  # noqa: E402
from wsss_fast.config import load_config  # noqa: E402
from wsss_fast.engine.paths import RunPaths  # noqa: E402
from wsss_fast.seg.infer import predict_seg  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class _Crash(Exception):
    pass


def write_pseudo_labels(train: FakeDataset, paths: RunPaths) -> None:
    """Pseudo labels: the ground truth with an ignored top border."""
    paths.sem_seg.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(train.image_ids):
        lab = train.masks[i].copy()
        lab[:2] = 255
        Image.fromarray(lab).save(paths.sem_seg / f"{name}.png")


def seg_cfg(device: str = "cpu", **seg) -> dict:
    return load_config(None, {
        "device": device, "num_workers": 0, "sampler": {"neg_pos_ratio": None},
        "dataset": {"num_classes": 1, "image_size": 32},
        "augment": {"scale": [0.8, 1.2], "rotate": 10, "hflip": True, "blur_p": 0.5},
        "seg": {"arch": "unet", "encoder": "resnet18", "decoder_channels": [16, 16, 8, 8, 8], "epochs": 3,
                "batch_size": 4, "image_size": 32, "optimizer": "sgd", "lr": 1e-2, "amp": False, **seg},
        "evaluate": {"splits": ["val"]},
    })


@pytest.fixture
def seg_data(tmp_path, monkeypatch):
    sets = {s: FakeDataset(8, 1, seed=k, prefix=s) for k, s in enumerate(["train", "val"])}
    monkeypatch.setattr("wsss_fast.data.build_dataset", fake_builder(sets), raising=False)
    paths = RunPaths(tmp_path / "run")
    write_pseudo_labels(sets["train"], paths)
    return paths, sets


def _copy_labels(src: RunPaths, dst: RunPaths) -> RunPaths:
    shutil.copytree(src.sem_seg, dst.sem_seg)
    return dst


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_mid_epoch_crash_resumes_to_the_uninterrupted_weights(seg_data, tmp_path, monkeypatch):
    paths, _ = seg_data
    cfg = seg_cfg()  # 8 images in batches of 4: 2 steps per epoch, 3 epochs
    ref = _copy_labels(paths, RunPaths(tmp_path / "ref"))
    seg_train.train_seg(cfg, ref)

    real = seg_train.seg_loss
    calls = []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the second step of epoch 2
            raise _Crash()
        return real(*args, **kwargs)

    monkeypatch.setattr(seg_train, "seg_loss", crashing)
    with pytest.raises(_Crash):
        seg_train.train_seg(cfg, paths)
    assert _load(paths.seg / "last.pt")["epoch"] == 1 and not paths.is_done(paths.seg)
    monkeypatch.setattr(seg_train, "seg_loss", real)
    torch.rand(7)  # a different process history before the resume
    seg_train.train_seg(cfg, paths)

    a, b = _load(ref.seg / "final.pt")["model"], _load(paths.seg / "final.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert repr(_load(ref.seg / "last.pt")["optimizer"]) == repr(_load(paths.seg / "last.pt")["optimizer"])


def test_predict_seg_crash_mid_write_then_resume(seg_data, tmp_path, monkeypatch):
    paths, sets = seg_data
    cfg = seg_cfg(epochs=1)
    seg_train.train_seg(cfg, paths)
    ref = RunPaths(tmp_path / "ref")
    shutil.copytree(paths.seg, ref.seg)
    predict_seg(cfg, ref)

    real = Image.Image.save
    crash_mid_write(monkeypatch, Image.Image, "save", 1, on_call=3)
    with pytest.raises(CrashMidWrite):
        predict_seg(cfg, paths)
    ids = sets["val"].image_ids
    # PNGs are written on threads, in any order: the crashed one is missing, the others whole
    written = [f for f in files_in(paths.seg_pred) if f.endswith(".png")]
    assert not [f for f in files_in(paths.seg_pred) if f.startswith(".")]  # no temporary left
    assert 2 <= len(written) < len(ids) and set(written) < {f"{i}.png" for i in ids}
    for name in written:
        assert (ref.seg_pred / name).read_bytes() == (paths.seg_pred / name).read_bytes(), name
    monkeypatch.setattr(Image.Image, "save", real)
    predict_seg(cfg, paths)
    names = files_in(ref.seg_pred)
    assert names == files_in(paths.seg_pred) == sorted([".done", "threshold.json"] + [f"{i}.png" for i in ids])
    for name in names:
        assert (ref.seg_pred / name).read_bytes() == (paths.seg_pred / name).read_bytes(), name


def test_amp_autocast_and_grad_scaler(seg_data, device, monkeypatch):
    """seg.amp: float16 autocast + GradScaler on CUDA; the scaler's state goes into last.pt and
    comes back on resume. On the CPU the flag is ignored (documented: CUDA only)."""
    paths, _ = seg_data
    seen = []
    real_loss = seg_train.seg_loss

    def spy(logits, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu"))
        return real_loss(logits, *args, **kwargs)

    monkeypatch.setattr(seg_train, "seg_loss", spy)
    real_forward = seg_train.model_from_cfg

    def model_from_cfg(*args, **kwargs):  # records the autocast state the network runs in
        model = real_forward(*args, **kwargs)
        model.register_forward_hook(lambda m, i, out: seen.append(
            torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else out.dtype))
        return model

    monkeypatch.setattr(seg_train, "model_from_cfg", model_from_cfg)
    seg_train.train_seg(seg_cfg(device, amp=True, epochs=1), paths)
    last = _load(paths.seg / "last.pt")
    if device == "cpu":
        assert last["scaler"] is None and seen == [torch.float32, False] * 2
        return
    assert seen == [torch.float16, False] * 2  # the loss is computed outside autocast
    assert last["scaler"]["scale"] > 0
    # resume with a distinctive scale: the scaler continues from it (a fresh one starts at 2**16
    # and only halves, once per overflowing step)
    last["scaler"]["scale"] = 8.0
    torch.save(last, paths.seg / "last.pt")
    seg_train.train_seg(seg_cfg(device, amp=True, epochs=2), paths)
    after = _load(paths.seg / "last.pt")
    assert after["epoch"] == 2 and after["scaler"]["scale"] <= 8.0
    for k, v in _load(paths.seg / "final.pt")["model"].items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k
