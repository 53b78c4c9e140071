"""Transforms (augmentation, resize, normalization) and the class-balanced batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_fast.config import load_config
from wsss_fast.data import BalancedBatchSampler, denormalize, eval_transform, train_transform
from wsss_fast.data.transforms import to_normalized_tensor

CFG = load_config(None, {"dataset": {"image_size": 32},
                         "augment": {"scale": [0.9, 1.1], "rotate": 10, "blur_p": 0.5, "brightness": 0.2,
                                     "contrast": 0.2, "hflip": True}})


def test_eval_transform_resizes_and_normalizes():
    img = np.full((40, 50, 3), 128, np.uint8)
    t = eval_transform(CFG)(img)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    np.testing.assert_allclose(denormalize(t).numpy(), 128 / 255, atol=1e-5)
    no_resize = load_config(None, {"dataset": {"image_size": None}})
    t2 = eval_transform(no_resize)(img[:, :, 0])  # grayscale input, no resize
    assert t2.shape == (3, 40, 50)


def test_train_transform_is_random_and_keeps_mask_aligned():
    torch.manual_seed(0)
    img = np.zeros((64, 64, 3), np.uint8)
    img[10:30, 5:20] = 255
    mask = (img[:, :, 0] > 0).astype(np.uint8)
    tf = train_transform(CFG)
    outs = []
    for _ in range(6):
        x, m = tf(img, mask)
        assert x.shape == (3, 32, 32) and m.shape == (32, 32) and m.dtype == torch.uint8
        bright = denormalize(x)[0] > 0.5
        fg = m == 1
        # geometry is shared: the bright square and the mask overlap almost exactly
        assert (bright & fg).sum() >= 0.7 * fg.sum()
        assert set(m.unique().tolist()) <= {0, 1, 255}
        outs.append(x)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    with pytest.raises(ValueError, match="mask size"):
        tf(img, mask[:10])


def test_augment_disabled_is_deterministic():
    cfg = load_config(None, {"dataset": {"image_size": 16}, "augment": {"enabled": False}})
    img = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    assert torch.equal(train_transform(cfg)(img), eval_transform(cfg)(img))


def _no_ops(**on):
    """Augmentation enabled with every op off, except those given."""
    aug = {"enabled": True, "scale": None, "rotate": 0, "blur_p": 0, "brightness": 0, "contrast": 0,
           "hflip": False}
    return {**aug, **on}


def test_every_augment_op_off_is_the_eval_transform():
    """``augment`` enabled but each op off (hflip: false, scale: null, rotate/blur/jitter 0)
    augments nothing: the training transform equals the evaluation one whatever the seed."""
    cfg = load_config(None, {"dataset": {"image_size": 16}, "augment": _no_ops()})
    img = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    mask = np.zeros((20, 24), np.uint8)
    mask[:, :6] = 1
    ref = eval_transform(cfg)(img)
    for seed in range(16):
        torch.manual_seed(seed)
        x, m = train_transform(cfg)(img, mask)
        assert torch.equal(x, ref) and torch.equal(train_transform(cfg)(img), ref)
        assert m[:, :3].eq(1).all() and m[:, -3:].eq(0).all()  # the left stripe stays left


def test_pixels_moved_in_from_outside_are_ignore():
    """Pixels a scaling/rotation (or the crop's padding) brings in from outside the image are
    255 = ignore in the mask (not 0 = background, which would train on invented background)
    and black in the image."""
    img = np.full((32, 32, 3), 200, np.uint8)
    mask = np.ones((32, 32), np.uint8)
    for aug, dataset in ((_no_ops(scale=[0.5, 0.5]), {"image_size": 32}),
                         (_no_ops(rotate=45), {"image_size": 32}),
                         ({"enabled": False}, {"image_size": None, "crop_size": 48})):
        cfg = load_config(None, {"dataset": dataset, "augment": aug})
        values = set()
        for seed in range(4):
            torch.manual_seed(seed)
            x, m = train_transform(cfg)(img, mask)
            values |= set(m.unique().tolist())
            if (m == 255).any():
                assert denormalize(x)[:, m == 255].mean() < 0.1  # black where the mask is ignore
        assert values == {1, 255}, aug


def test_normalization_uses_imagenet_mean_and_std_in_rgb_order():
    """A pure red image is normalized with ImageNet's RGB statistics (mean 0.485, 0.456, 0.406;
    std 0.229, 0.224, 0.225), the order the pretrained backbones were trained with."""
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    want = [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]
    no_resize = load_config(None, {"dataset": {"image_size": None}})
    for t in (eval_transform(CFG)(red), eval_transform(no_resize)(red), to_normalized_tensor(red)):
        np.testing.assert_allclose(t.mean(dim=(1, 2)).numpy(), want, atol=1e-4)


@pytest.mark.parametrize("ratio", [1.0, 3.0, 0.5])
def test_balanced_sampler_ratio(ratio):
    labels = np.zeros((100, 1), np.float32)
    labels[:10] = 1  # 10% positive
    s = BalancedBatchSampler(labels, 8, ratio, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 100 // 8
    n_pos = round(8 / (1 + ratio))
    for b in batches:
        assert len(b) == 8 and int(labels[b].sum()) == n_pos
    s.set_epoch(1)
    assert list(s) != batches
    s.set_epoch(0)
    assert list(s) == batches
    seen = set(sum(batches, []))
    assert set(range(10)) <= seen  # every positive is used


def test_sampler_fallbacks_and_ranks():
    multi = np.eye(4, dtype=np.float32)[np.arange(20) % 4]  # multi-label (VOC-like)
    s = BalancedBatchSampler(multi, 5, 1.0, seed=0)
    assert not s.balanced and sorted(sum(list(s), [])) == list(range(20))
    none = BalancedBatchSampler(np.zeros(10), 4, None)
    assert not none.balanced and len(list(none)) == 2
    lab = np.arange(40) % 2
    full = BalancedBatchSampler(lab, 4, 1.0, seed=1)
    ranks = [BalancedBatchSampler(lab, 4, 1.0, seed=1, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 3):
        for s in (full, *ranks):
            s.set_epoch(epoch)
        g = list(full)
        r0, r1 = (list(s) for s in ranks)
        assert len(r0) == len(r1) == 5 and len(g) == 10
        # step t of rank r is global batch 2 t + r: together the ranks run the single-process sequence
        assert [b for pair in zip(r0, r1) for b in pair] == g
