"""train-cls with ``cls.amp``: float16 autocast + GradScaler on CUDA, whose state goes into
``last.pt`` and comes back on resume; on the CPU the flag is ignored (documented: CUDA only)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train import TinyDataset, tiny_cfg  # noqa: E402

import wsss_fast.cls.train as cls_mod  # noqa: E402
from wsss_fast.engine.paths import RunPaths  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _record_autocast(monkeypatch) -> list:
    """Record, for every training forward pass, the autocast dtype (None: autocast off)."""
    seen: list = []
    real = cls_mod.build_classifier

    def build_classifier(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_hook(lambda m, i, o: seen.append(
            torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None)
            if m.training else None)
        return model

    monkeypatch.setattr(cls_mod, "build_classifier", build_classifier)
    return seen


def test_amp_autocast_and_grad_scaler(tmp_path, device, monkeypatch):
    seen = _record_autocast(monkeypatch)
    train, val = TinyDataset(16, seed=0), TinyDataset(8, seed=1)
    paths = RunPaths(tmp_path / "amp")
    cfg = tiny_cfg(f"device={device}", "cls.amp=true", "cls.epochs=1")
    out = cls_mod.fit_classifier(cfg, paths, train, val)
    last = torch.load(paths.cls / "last.pt", weights_only=True)
    assert len(seen) == 2  # 16 images in batches of 8
    if device == "cpu":
        # ignored: no autocast, a disabled scaler, and the weights of cls.amp=false
        assert seen == [None, None] and last["scaler"] is None
        plain = cls_mod.fit_classifier(tiny_cfg("cls.amp=false", "cls.epochs=1"), RunPaths(tmp_path / "plain"),
                                       train, val)
        for k, v in plain["model"].state_dict().items():
            assert torch.equal(v, out["model"].state_dict()[k]), k
        return
    assert seen == [torch.float16, torch.float16] and last["scaler"]["scale"] > 0
    for h in out["history"]:
        assert all(v == v for v in h.values() if isinstance(v, float))  # no NaN loss / F1
    # resume with a distinctive scale: the scaler continues from it (a fresh one starts at
    # 2**16 and only halves, once per overflowing step)
    last["scaler"]["scale"] = 8.0
    torch.save(last, paths.cls / "last.pt")
    resumed = cls_mod.fit_classifier(tiny_cfg(f"device={device}", "cls.amp=true", "cls.epochs=2"), paths,
                                     train, val)
    after = torch.load(paths.cls / "last.pt", weights_only=True)
    assert resumed["epochs_run"] == 1 and after["epoch"] == 2 and after["scaler"]["scale"] <= 8.0
    for k, v in after["model"].items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k
