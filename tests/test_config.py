"""Shipped configs: each one loads and builds training batches of the right shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from wsss_fast.config import load_config
from wsss_fast.data import train_transform
from wsss_fast.seg.data import train_transform as seg_train_transform
from wsss_fast.train.cls import _collate

# Images of different sizes and aspect ratios, as VOC has them (and one smaller than a crop).
SIZES = [(375, 500), (500, 375), (200, 230)]


@pytest.mark.parametrize("name", [None, "demo", "siim", "voc"])
def test_shipped_config_builds_training_batches(name):
    torch.manual_seed(0)
    cfg = load_config(name)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    masks = [rng.integers(0, 3, (h, w)).astype(np.uint8) for h, w in SIZES]

    # step 1: one classifier batch (raises when the images of a batch differ in size)
    x, y = _collate([{"image": train_transform(cfg)(im), "label": [1.0]} for im in images])
    assert x.shape[:2] == (3, 3) and x.dtype == torch.float32 and y.shape == (3, 1)

    # step 3: one segmentation batch of images with their label maps
    tf = seg_train_transform(cfg)
    pairs = [tf(tv_tensors.Image(torch.from_numpy(im).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(m)))
             for im, m in zip(images, masks)]
    xs = torch.stack([p[0].as_subclass(torch.Tensor) for p in pairs])
    ms = torch.stack([p[1].as_subclass(torch.Tensor) for p in pairs])
    assert xs.shape[0] == 3 and xs.shape[-2:] == ms.shape[-2:]
    assert set(ms.unique().tolist()) <= {0, 1, 2, 255}
