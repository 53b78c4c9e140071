"""Step 3 training and inference on a tiny fake dataset (resume, outputs, loss)."""

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
from wsss_fast.runs import RunPaths  # noqa: E402
from wsss_fast.seg.infer import predict_seg  # noqa: E402
from wsss_fast.seg.train import poly_lr, seg_loss, train_seg  # noqa: E402


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


def test_poly_lr():
    assert poly_lr(1.0, 0, 10) == 1.0
    assert poly_lr(1.0, 5, 10) == pytest.approx(0.5 ** 0.9)
    assert poly_lr(1.0, 9, 10) > 0


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


def test_missing_pseudo_labels_is_a_clear_error(tmp_path, monkeypatch):
    cfg, paths, sets = _setup(tmp_path, monkeypatch)
    (paths.sem_seg / f"{sets['train'].image_ids[3]}.png").unlink()
    with pytest.raises(FileNotFoundError, match="pseudo labels"):
        train_seg(cfg, paths)


def test_predict_without_checkpoint(tmp_path, monkeypatch):
    cfg, paths, _ = _setup(tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match="final.pt"):
        predict_seg(cfg, paths)


def test_balanced_sampler_batches(tmp_path, monkeypatch):
    pytest.importorskip("wsss_fast.data.sampler")
    from wsss_fast.seg.train import _Batches

    labels = np.array([[1], [0], [0], [0], [1], [0], [0], [0]], np.float32)
    b = _Batches(labels, 4, 1.0, 0, rank=0, world=1)
    batches = list(b)
    assert batches and all(any(labels[i, 0] > 0 for i in batch) for batch in batches)
    # two ranks see disjoint halves of the same global batches
    r0 = list(_Batches(labels, 4, 1.0, 0, rank=0, world=2))
    r1 = list(_Batches(labels, 4, 1.0, 0, rank=1, world=2))
    assert len(r0) == len(r1)
    for a, c in zip(r0, r1):
        assert not set(a) & set(c)
