"""Step 3 training and inference on a tiny fake dataset (resume, outputs, loss)."""

from __future__ import annotations

import json
import shutil
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
from wsss_fast.data.sampler import GlobalBatchSampler  # noqa: E402
from wsss_fast.seg.train import seg_loss, train_seg  # noqa: E402


def test_seg_loss_binary_ignores_255_and_weights_positives():
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[0, 1], [255, 255]]])
    base = seg_loss(logits, target)
    assert torch.isclose(base, torch.tensor(np.log(2.0), dtype=torch.float32))
    # ignored pixels do not count, whatever their logits
    logits2 = logits.clone()
    logits2[0, 0, 1] = 50.0
    assert torch.isclose(seg_loss(logits2, target), base)
    # pos_weight 3: (3 log2 + log2) / 2
    assert torch.isclose(seg_loss(logits, target, 3.0), torch.tensor(2 * np.log(2.0), dtype=torch.float32))
    # all ignored: zero, differentiable
    z = seg_loss(logits.requires_grad_(), torch.full((1, 2, 2), 255))
    assert z.item() == 0 and z.requires_grad


def test_seg_loss_multiclass_is_ce_with_ignore():
    logits = torch.randn(2, 4, 3, 3)
    target = torch.randint(0, 4, (2, 3, 3))
    target[0, 0, 0] = 255
    ref = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(seg_loss(logits, target), ref)


def _setup(tmp_path, monkeypatch, num_classes=1, **seg):
    sets = {s: FakeDataset(8, num_classes, seed=k, prefix=s) for k, s in enumerate(["train", "val", "test"])}
    monkeypatch.setattr("wsss_fast.data.build_dataset", fake_builder(sets), raising=False)
    cfg = load_config(None, {
        "device": "cpu", "num_workers": 0, "sampler": {"neg_pos_ratio": None},
        "dataset": {"num_classes": num_classes, "image_size": 32},
        "seg": {"arch": "unet", "encoder": "resnet18", "epochs": 2, "batch_size": 4, "image_size": 32,
                "optimizer": "adam", "lr": 1e-3, **seg},
        "evaluate": {"splits": ["val", "test"]},
    })
    paths = RunPaths(tmp_path / "run")
    train = sets["train"]
    for i, name in enumerate(train.image_ids):  # pseudo labels: GT with an ignore border
        lab = train.masks[i].copy()
        lab[:2] = 255
        paths.sem_seg.mkdir(parents=True, exist_ok=True)
        Image.fromarray(lab).save(paths.sem_seg / f"{name}.png")
    return cfg, paths, sets


@pytest.mark.parametrize("num_classes", [1, 3])
def test_train_resume_and_predict(tmp_path, monkeypatch, num_classes):
    cfg, paths, sets = _setup(tmp_path, monkeypatch, num_classes)
    train_seg(cfg, paths)
    assert paths.is_done(paths.seg)
    assert (paths.seg / "final.pt").exists() and (paths.seg / "last.pt").exists()
    log = [json.loads(x) for x in (paths.seg / "train.log").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["lr"] < log[0]["lr"]
    # resume: a longer schedule continues from the saved epoch instead of restarting
    cfg["seg"]["epochs"] = 3
    train_seg(cfg, paths)
    log = [json.loads(x) for x in (paths.seg / "train.log").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]

    predict_seg(cfg, paths)
    assert paths.is_done(paths.seg_pred)
    for split in ("val", "test"):
        ds = sets[split]
        for i, name in enumerate(ds.image_ids):
            pred = np.array(Image.open(paths.seg_pred / f"{name}.png"))
            assert pred.shape == ds.sizes[i]  # original resolution
            assert pred.dtype == np.uint8 and pred.max() <= num_classes


def test_resumed_training_repeats_an_uninterrupted_one(tmp_path, monkeypatch):
    """1 epoch + resume to 2 gives the weights of 2 epochs in one go (augmentation and batch
    order are seeded per epoch, not once per process)."""
    cfg, paths, _ = _setup(tmp_path, monkeypatch)
    cfg["augment"].update({"scale": [0.8, 1.2], "rotate": 10, "hflip": True, "blur_p": 0.5})
    train_seg(cfg, paths)
    straight = torch.load(paths.seg / "final.pt", weights_only=False)["model"]
    resumed = RunPaths(tmp_path / "resumed")
    shutil.copytree(paths.sem_seg, resumed.sem_seg)
    cfg["seg"]["epochs"] = 1
    train_seg(cfg, resumed)
    torch.rand(5)  # a different process history before the resume
    cfg["seg"]["epochs"] = 2
    train_seg(cfg, resumed)
    again = torch.load(resumed.seg / "final.pt", weights_only=False)["model"]
    assert straight.keys() == again.keys()
    for k in straight:
        torch.testing.assert_close(again[k], straight[k], msg=k)


def test_train_seg_uses_the_configured_loss_sampler_and_optimizer(tmp_path, monkeypatch):
    """train-seg weighs positives by seg.pos_weight (the paper's positive-weighted BCE), balances
    its batches by sampler.neg_pos_ratio, and SGD gets seg.momentum and seg.weight_decay."""
    import wsss_fast.seg.train as seg_mod

    cfg, paths, _ = _setup(tmp_path, monkeypatch, pos_weight=3.0, epochs=1)
    cfg["sampler"]["neg_pos_ratio"] = 1.0
    weights, ratios = [], []

    def loss(logits, y, pos_weight=None):
        weights.append(pos_weight)
        return seg_loss(logits, y, pos_weight)

    class Sampler(GlobalBatchSampler):
        def __init__(self, labels, batch_size, ratio, *args, **kwargs):
            ratios.append(ratio)
            super().__init__(labels, batch_size, ratio, *args, **kwargs)

    monkeypatch.setattr(seg_mod, "seg_loss", loss)
    monkeypatch.setattr(seg_mod, "GlobalBatchSampler", Sampler)
    train_seg(cfg, paths)
    assert weights and all(w == 3.0 for w in weights), weights
    assert ratios == [1.0]
    model = torch.nn.Linear(2, 2)
    sgd = seg_mod.build_optimizer(load_config(None, ["seg.optimizer=sgd", "seg.weight_decay=1e-4",
                                                     "seg.momentum=0.8"]), model).param_groups[0]
    assert isinstance(seg_mod.build_optimizer(cfg, model), torch.optim.Adam)
    assert (sgd["weight_decay"], sgd["momentum"]) == (1e-4, 0.8)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_an_epoch_waits_for_values_only_to_log(device, host_reads, monkeypatch, name):
    """The epoch's loss stays on the device between progress-bar updates, and on CUDA the
    optimizer is fused (the GradScaler's step reads no flag): with a loss that reads nothing,
    the host's waits do not grow with the number of iterations (on the CPU the reads that would
    wait are counted)."""
    import torch.nn.functional as F

    import wsss_fast.seg.train as seg_mod
    from wsss_fast.seg.model import model_from_cfg

    if name == "adam" and device == "cpu":
        pytest.skip("the CPU's Adam reads its step counts, which stay on the host (no wait on CUDA)")
    cfg = load_config(None, {"device": device, "seg": {"arch": "unet", "encoder": "resnet18", "optimizer": name,
                                                       "decoder_channels": [16, 16, 8, 8, 8]}})
    net = model_from_cfg(cfg, 1).to(device)
    opt = seg_mod.build_optimizer(cfg, net)
    assert opt.param_groups[0]["fused"] is (True if device == "cuda" else None)
    scaler = torch.amp.GradScaler("cuda", enabled=device == "cuda")
    monkeypatch.setattr(seg_mod, "seg_loss", lambda logits, y, pw: F.binary_cross_entropy_with_logits(
        logits[:, 0], (y == 1).float()))
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(4, 3, 32, 32, generator=g).to(device),
             "mask": torch.randint(0, 2, (4, 32, 32), generator=g).to(device)}

    def waits(iterations: int):
        with host_reads(device) as reads:
            seg_mod._train_one_epoch(net, [batch] * iterations, opt, scaler, None, device == "cuda",
                                     log_every=1000, lr=1e-3, desc="t", show=True)
        return reads

    waits(2)  # the optimizer's and the scaler's state come with the first steps
    two, six = waits(2), waits(6)
    assert two.count > 0  # the epoch's end reads the loss
    assert six.count == two.count, six.where


def test_missing_pseudo_labels_is_a_clear_error(tmp_path, monkeypatch):
    cfg, paths, sets = _setup(tmp_path, monkeypatch)
    (paths.sem_seg / f"{sets['train'].image_ids[3]}.png").unlink()
    with pytest.raises(FileNotFoundError, match="pseudo labels"):
        train_seg(cfg, paths)


def test_predict_without_checkpoint(tmp_path, monkeypatch):
    cfg, paths, _ = _setup(tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match="final.pt"):
        predict_seg(cfg, paths)


def _Batches(labels, batch_size, ratio, seed, rank, world):
    """train-seg's sampler: seeds 1000 apart per epoch, no rank left with a batch of one."""
    least = world * (2 if batch_size >= 2 * world else 1)
    return GlobalBatchSampler(labels, batch_size, ratio, seed, rank, world, seed_stride=1000, min_batch=least)


def test_balanced_sampler_batches(tmp_path, monkeypatch):
    labels = np.array([[1], [0], [0], [0], [1], [0], [0], [0]], np.float32)
    b = _Batches(labels, 4, 1.0, 0, rank=0, world=1)
    batches = list(b)
    assert batches and all(any(labels[i, 0] > 0 for i in batch) for batch in batches)
    # two ranks see disjoint halves of the same global batches: per step, together the global batch
    for epoch in (0, 2):
        full = _Batches(labels, 4, 1.0, 0, rank=0, world=1)
        ranks = [_Batches(labels, 4, 1.0, 0, rank=r, world=2) for r in range(2)]
        for s in (full, *ranks):
            s.set_epoch(epoch)
        r0, r1 = (list(s) for s in ranks)
        g = list(full)
        assert len(r0) == len(r1) == len(g) == 2
        for a, c, batch in zip(r0, r1, g):
            assert len(a) == len(c) == 2 and sorted(a + c) == sorted(batch)


@pytest.mark.parametrize("world", [1, 2])
def test_no_batch_of_one_per_rank(world):
    """A short last batch that would leave a rank one sample (BatchNorm cannot train on it,
    DeepLabV3+'s ASPP pooling raises) is dropped; the others are kept whole."""
    labels = np.ones((17, 1), np.float32)  # all positive: plain shuffled batches
    ranks = [list(_Batches(labels, 4, None, 0, rank=r, world=world)) for r in range(world)]
    for batches in ranks:
        assert len(batches) == len(_Batches(labels, 4, None, 0, rank=0, world=world)) == 4
        assert all(len(b) == 4 // world for b in batches)
    seen = sorted(i for batches in ranks for b in batches for i in b)
    assert len(seen) == 16 and len(set(seen)) == 16
    # a batch size of 1 is the user's choice: every sample is still used
    assert len(list(_Batches(labels, 1, None, 0, rank=0, world=1))) == 17
