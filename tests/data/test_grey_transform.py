"""Grey images go through the transforms as one channel: the same tensors as the stacked
3-channel image (the networks' input), at a third of the augmentation work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_fast.config import load_config
from wsss_fast.data import SIIMPneumothorax
from wsss_fast.data.transforms import eval_transform, train_transform


def _grey(size=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _both(t, grey, mask=None, seed=0):
    torch.manual_seed(seed)
    a = t(grey) if mask is None else t(grey, mask)
    torch.manual_seed(seed)
    stacked = np.repeat(grey[:, :, None], 3, axis=2)
    b = t(stacked) if mask is None else t(stacked, mask)
    return a, b


def test_eval_transform_grey_equals_stacked():
    t = eval_transform(load_config(None, {"dataset": {"image_size": 32}}))
    a, b = _both(t, _grey())
    assert a.shape == (3, 32, 32) and torch.equal(a, b)


@pytest.mark.parametrize("seed", range(4))
def test_train_transform_grey_equals_stacked(seed):
    """Affine, blur, flip and brightness act per channel: identical; with the mask too."""
    cfg = load_config(None, {"dataset": {"image_size": 32}, "augment": {"contrast": 0, "blur_p": 0.5}})
    mask = (np.random.default_rng(1).random((40, 40)) > 0.5).astype(np.uint8)
    (ai, am), (bi, bm) = _both(train_transform(cfg), _grey(), mask, seed)
    assert torch.equal(ai, bi) and torch.equal(am, bm)


def test_contrast_differs_by_rounding_only():
    cfg = load_config(None, {"dataset": {"image_size": 32}})
    for seed in range(4):
        a, b = _both(train_transform(cfg), _grey(), seed=seed)
        assert (a - b).abs().max() <= 1.5 / 255 / 0.224  # one uint8 step through the std


def test_siim_items_take_the_grey_path(synth_root, monkeypatch):
    ds = SIIMPneumothorax(synth_root, transform=eval_transform(load_config(None, {"dataset": {"image_size": 48}})))
    seen = []
    real = ds.transform

    def spy(image, *a):
        seen.append(np.asarray(image).ndim)
        return real(image, *a)

    monkeypatch.setattr(ds, "transform", spy)
    item = ds[0]
    assert seen == [2] and item["image"].shape == (3, 48, 48)
    assert torch.equal(item["image"], real(ds.load_image(0)))


def test_the_ops_see_one_channel():
    """The saving itself: the augmentation runs on [1, H, W]; the output has 3 channels."""
    t = train_transform(load_config(None, {"dataset": {"image_size": 32}}))
    seen = []
    ops = t.ops

    def spy(*inputs):
        seen.append(tuple(inputs[0].shape))
        return ops(*inputs)

    t.ops = spy
    assert t(_grey()).shape == (3, 32, 32)
    assert seen == [(1, 40, 40)]
