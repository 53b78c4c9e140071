"""Step-3 joint transforms: the label map follows the image, and the config is honoured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from wsss_fast.config import load_config
from wsss_fast.data import denormalize
from wsss_fast.engine.files import write_png
from wsss_fast.seg.data import PseudoLabelDataset, eval_transform, train_transform


def _square(size: int = 64) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    img = torch.zeros(3, size, size, dtype=torch.uint8)
    img[:, 10:34, 20:40] = 255
    return tv_tensors.Image(img), tv_tensors.Mask((img[0] > 0).to(torch.uint8))


def _cfg(**augment) -> dict:
    base = {"scale": [0.7, 1.3], "rotate": 30, "blur_p": 0.0, "brightness": 0.0, "contrast": 0.0, "hflip": True}
    return load_config(None, {"dataset": {"image_size": None}, "seg": {"image_size": 48, "crop_size": 40},
                              "augment": {**base, **augment}})


def test_mask_follows_image_geometry():
    torch.manual_seed(0)
    tf = train_transform(_cfg())
    img, mask = _square()
    changed = False
    for _ in range(8):
        x, m = tf(img, mask)
        assert x.shape == (3, 40, 40) and m.shape == (40, 40) and m.dtype == torch.uint8
        fg = m == 1
        bright = denormalize(x.as_subclass(torch.Tensor))[0] > 0.5
        # the same geometry: the bright square and the foreground of the mask coincide
        assert (bright & fg).sum() >= 0.8 * fg.sum() and (bright & ~fg & (m != 255)).sum() <= 0.2 * fg.sum() + 4
        assert set(m.unique().tolist()) <= {0, 1, 255}
        changed |= not torch.equal(m, train_transform(_cfg(rotate=0, scale=None, hflip=False))(img, mask)[1])
    assert changed


def test_augment_enabled_false_is_honoured():
    cfg = _cfg(blur_p=1.0, brightness=0.5, enabled=False)
    cfg["seg"]["image_size"] = 64  # no resampling: crops are exact
    tf = train_transform(cfg)
    assert not any(isinstance(t, (v2.RandomAffine, v2.RandomHorizontalFlip, v2.RandomApply, v2.ColorJitter))
                   for t in tf.transforms)
    img, mask = _square()
    torch.manual_seed(0)
    x, m = tf(img, mask)
    torch.manual_seed(1)
    x2, m2 = tf(img, mask)
    assert x.shape == (3, 40, 40)
    # only the random crop is left: images and masks are the same crop of the pair
    assert (denormalize(x.as_subclass(torch.Tensor))[0] > 0.5).eq(m == 1).all()
    assert (denormalize(x2.as_subclass(torch.Tensor))[0] > 0.5).eq(m2 == 1).all()


def test_blur_settings_come_from_the_config():
    tf = train_transform(_cfg(blur_p=0.3, blur_kernel=7, blur_sigma=[0.5, 2.0]))
    blur = [t for t in tf.transforms if isinstance(t, v2.RandomApply)]
    assert len(blur) == 1 and blur[0].p == pytest.approx(0.3)
    g = blur[0].transforms[0]
    assert list(g.kernel_size) == [7, 7] and list(g.sigma) == [0.5, 2.0]


def test_affine_is_bilinear_for_the_image():
    tf = train_transform(_cfg())
    affine = [t for t in tf.transforms if isinstance(t, v2.RandomAffine)]
    assert len(affine) == 1 and affine[0].interpolation == v2.InterpolationMode.BILINEAR


def test_eval_transform_resizes_and_normalizes():
    img, _ = _square()
    x = eval_transform(_cfg())(img)
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32


class _Base:
    """A data set of one RGB image, 6 x 10 (not square)."""

    image_ids = ["img0"]

    def load_image(self, i: int) -> np.ndarray:
        return np.full((6, 10, 3), 7, np.uint8)


def test_a_pseudo_label_of_another_size_is_resized_nearest(tmp_path):
    """Labels at half the image's size are scaled up without inventing values (0, 1, 255 only)."""
    label = np.array([[0, 1, 1, 255, 0], [1, 1, 0, 0, 255], [255, 0, 1, 1, 1]], np.uint8)  # 3 x 5
    write_png(label, tmp_path / "img0.png")
    item = PseudoLabelDataset(_Base(), tmp_path, lambda img, mask: (img, mask))[0]
    want = np.repeat(np.repeat(label, 2, axis=0), 2, axis=1)
    assert item["image"].shape == (3, 6, 10)
    np.testing.assert_array_equal(item["mask"].numpy(), want)


def test_pixels_a_crop_pads_in_are_ignored():
    """A crop larger than the image pads the image black and the mask with 255 (ignored by the loss)."""
    cfg = _cfg(enabled=False)
    cfg["seg"]["image_size"], cfg["seg"]["crop_size"] = 32, 40
    img, mask = _square(32)
    x, m = train_transform(cfg)(img, mask)
    assert m.shape == (40, 40)
    padded = torch.ones(40, 40, dtype=torch.bool)
    ys, xs = torch.nonzero(m != 255, as_tuple=True)
    top, left = int(ys.min()), int(xs.min())
    padded[top:top + 32, left:left + 32] = False
    assert (m[padded] == 255).all() and (m[~padded] != 255).all()
    assert (denormalize(x.as_subclass(torch.Tensor))[:, padded].abs() < 1e-6).all()
