"""train-irn: a crash in the middle of an epoch resumes to the weights of an uninterrupted run
(``last.pt`` is written per epoch with the RNG states; the resumed run repeats the interrupted
epoch from it), with and without loader workers; AMP (bf16 autocast) on CUDA."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import wsss_fast.irn.train as irn_train
from wsss_fast.irn.ir_label import make_ir_label
from wsss_fast.irn.model import IRNet
from wsss_fast.engine.paths import RunPaths

from .conftest import tiny_cfg


class _Crash(Exception):
    pass


def _crash_on_step(monkeypatch, k: int):
    """Make the k-th training step (1-based, counted over the run) raise after its forward
    pass; returns the real loss function."""
    real = irn_train.irn_loss
    calls = []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == k:
            raise _Crash()
        return real(*args, **kwargs)

    monkeypatch.setattr(irn_train, "irn_loss", crashing)
    return real


def _copy_inputs(src: RunPaths, dst: RunPaths) -> RunPaths:
    shutil.copytree(src.cam, dst.cam)
    shutil.copytree(src.ir_label, dst.ir_label)
    return dst


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("workers", [0, 1])
def test_mid_epoch_crash_resumes_to_the_uninterrupted_weights(fake_data, tmp_path, monkeypatch, workers):
    paths, _ = fake_data
    # 8 training images in batches of 4: 2 steps per epoch, augmentation on (rescale, flip, crop)
    cfg = tiny_cfg(num_workers=workers, irn={"epochs": 3, "batch_size": 4, "lr": 0.05})
    make_ir_label(cfg, paths)
    ref = _copy_inputs(paths, RunPaths(tmp_path / "ref"))
    irn_train.train_irn(cfg, ref)

    real = _crash_on_step(monkeypatch, 4)  # the second step of epoch 2: one step of it already taken
    with pytest.raises(_Crash):
        irn_train.train_irn(cfg, paths)
    ckpt = _load(paths.irn / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2) and not paths.is_done(paths.irn)
    monkeypatch.setattr(irn_train, "irn_loss", real)
    torch.rand(7)
    np.random.rand(7)  # a different process history before the resume
    irn_train.train_irn(cfg, paths)

    assert paths.is_done(paths.irn)
    a, b = _load(ref.irn / "last.pt"), _load(paths.irn / "last.pt")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (3, 6)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and torch.equal(a["gen_rng"], b["gen_rng"])
    assert torch.equal(a["rng"]["numpy"]["keys"], b["rng"]["numpy"]["keys"])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    fa, fb = _load(ref.irn / "final.pt"), _load(paths.irn / "final.pt")
    assert torch.equal(fa["dp_mean"], fb["dp_mean"])



def test_amp_bf16_autocast_and_resume_on_the_device(fake_data, device, monkeypatch):
    """irn.amp: bf16 autocast of the network on CUDA (no GradScaler: bf16 has fp32's range),
    ignored on the CPU (documented: on CUDA). A run resumed on the device restores the RNG
    states (CPU tensors, whatever the device) and repeats the uninterrupted run's draws."""
    paths, _ = fake_data
    seen = []
    real_forward = IRNet.forward

    def forward(self, x, *args):
        if self.training:
            seen.append(torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None)
        return real_forward(self, x, *args)

    monkeypatch.setattr(IRNet, "forward", forward)
    cfg = tiny_cfg(device=device, irn={"amp": True, "epochs": 2, "batch_size": 4})
    make_ir_label(cfg, paths)
    ref = _copy_inputs(paths, RunPaths(paths.root.parent / "ref"))
    irn_train.train_irn(cfg, ref)
    assert seen == [torch.bfloat16 if device == "cuda" else None] * 4

    real = _crash_on_step(monkeypatch, 4)
    with pytest.raises(_Crash):
        irn_train.train_irn(cfg, paths)
    monkeypatch.setattr(irn_train, "irn_loss", real)
    irn_train.train_irn(cfg, paths)  # resumes from last.pt at epoch 1, on the device
    a, b = _load(ref.irn / "last.pt"), _load(paths.irn / "last.pt")
    assert (b["epoch"], b["step"]) == (2, 4)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and torch.equal(a["gen_rng"], b["gen_rng"])
    assert torch.equal(a["rng"]["numpy"]["keys"], b["rng"]["numpy"]["keys"])
    for k, v in b["model"].items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k
            if device == "cpu":
                assert torch.equal(v, a["model"][k]), k
