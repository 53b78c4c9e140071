"""Image (and optional label map) transforms built on ``torchvision.transforms.v2``.

The training augmentation is the one listed by Viniavskyi et al. (AIME 2020): random
scaling, rotation, Gaussian blur, brightness/contrast and horizontal flip, configured
by the ``augment`` section of the config; then conversion to float and ImageNet
normalization. The evaluation transform only resizes (``dataset.image_size``; null keeps
the original size) and normalizes.

A transform is called as ``t(image)`` or ``t(image, mask)``:

- ``image``: uint8 numpy [H, W, 3] (or grey [H, W]) or uint8 tensor [3, H, W] (or [1, H, W]);
- ``mask``: label map uint8 numpy/tensor [H, W] (0 = bg, c + 1 = class c, 255 = ignore),
  transformed with the same geometry (nearest neighbour; pixels rotated in from outside
  the image are 255 = ignore).

It returns the float32 image [3, H', W'] (and the uint8 mask [H', W']).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..config import get

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FILL", "WSSSTransform", "train_transform", "eval_transform",
           "geometric_augment", "photometric_augment", "denormalize", "to_normalized_tensor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _image_tensor(image: Any) -> tv_tensors.Image:
    """uint8 [C, H, W] with C = 1 (grey: [H, W] or [H, W, 1] arrays, 1-channel tensors) or 3."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in (1, 3):
            raise ValueError(f"image must be [H, W, 3] or [H, W], got shape {image.shape}")
        if not image.flags.writeable or not image.flags.c_contiguous:
            image = np.array(image, copy=True, order="C")
        t = torch.from_numpy(image).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        t = image if image.ndim == 3 else image.unsqueeze(0)
    else:
        raise TypeError(f"image must be a numpy array or a tensor, got {type(image).__name__}")
    return tv_tensors.Image(t.contiguous())


def _rgb(t: torch.Tensor) -> torch.Tensor:
    """A grey [1, H, W] image as the 3 equal channels the networks take."""
    return t.expand(3, -1, -1) if t.shape[0] == 1 else t


def _mask_tensor(mask: Any) -> tv_tensors.Mask:
    m = torch.from_numpy(np.array(mask, copy=True, order="C")) if isinstance(mask, np.ndarray) else mask
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {tuple(m.shape)}")
    return tv_tensors.Mask(m.to(torch.uint8))


class WSSSTransform:
    """A v2 pipeline that accepts numpy or tensor input, with an optional label map.

    A grey image ([H, W] array or 1-channel tensor) goes through the ops as one channel and
    is stacked to 3 channels before ToDtype + Normalize: every op here acts per channel, so
    the result equals transforming the stacked image (ColorJitter's contrast takes the mean of
    the grey channel instead of the luma of 3 equal ones: the same up to uint8 rounding) at a
    third of the work.

    Args:
        ops: the v2 transforms, in order; ToDtype + Normalize are appended.
    """

    def __init__(self, ops: list) -> None:
        self.ops = v2.Compose(list(ops)) if ops else v2.Identity()
        self.finish = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __call__(self, image: Any, mask: Any = None):
        img = _image_tensor(image)
        if mask is None:
            out = self.ops(img)
            return self.finish(tv_tensors.Image(_rgb(out))).as_subclass(torch.Tensor)
        m = _mask_tensor(mask)
        if m.shape[-2:] != img.shape[-2:]:
            raise ValueError(f"mask size {tuple(m.shape[-2:])} differs from image size {tuple(img.shape[-2:])}")
        out_img, out_mask = self.ops(img, m)
        return (self.finish(tv_tensors.Image(_rgb(out_img))).as_subclass(torch.Tensor),
                out_mask.as_subclass(torch.Tensor))

    def __repr__(self) -> str:
        return f"WSSSTransform({self.ops}, {self.finish})"


def _size(cfg: dict) -> int | None:
    s = get(cfg, "dataset.image_size")
    return None if s is None else int(s)


FILL = {tv_tensors.Image: 0, tv_tensors.Mask: 255}  # pixels moved in from outside: black / ignore


def geometric_augment(aug: dict) -> list:
    """The ``augment`` section's geometric transforms: random scale + rotation (bilinear for
    the image, nearest for a mask, new pixels filled with :data:`FILL`) and horizontal flip.
    Empty when ``augment.enabled`` is false.

    Args:
        aug: the ``augment`` section of a configuration from :func:`~wsss_fast.config.load_config`.
    """
    if not aug["enabled"]:
        return []
    ops: list = []
    scale = aug["scale"]
    rotate = float(aug["rotate"] or 0)
    if scale or rotate:
        ops.append(v2.RandomAffine(degrees=rotate, scale=tuple(scale) if scale else None,
                                   interpolation=v2.InterpolationMode.BILINEAR, fill=FILL))
    if aug["hflip"]:
        ops.append(v2.RandomHorizontalFlip(0.5))
    return ops


def photometric_augment(aug: dict) -> list:
    """The ``augment`` section's photometric transforms (image only): Gaussian blur with
    probability ``blur_p`` (``blur_kernel``, ``blur_sigma``), then brightness/contrast jitter.
    Empty when ``augment.enabled`` is false. ``aug`` is as for :func:`geometric_augment`.
    """
    if not aug["enabled"]:
        return []
    ops: list = []
    blur_p = float(aug["blur_p"] or 0)
    if blur_p > 0:
        k = int(aug["blur_kernel"]) | 1
        sigma = tuple(aug["blur_sigma"])
        ops.append(v2.RandomApply([v2.GaussianBlur(k, sigma=sigma)], p=blur_p))
    b, c = float(aug["brightness"] or 0), float(aug["contrast"] or 0)
    if b or c:
        ops.append(v2.ColorJitter(brightness=b or None, contrast=c or None))
    return ops


def train_transform(cfg: dict) -> WSSSTransform:
    """Training transform: resize to ``dataset.image_size`` (or random crop to
    ``dataset.crop_size`` when image_size is null), then the ``augment`` section's
    augmentation (each entry can be disabled with null/0/false, all of it with
    ``enabled: false``)."""
    aug = get(cfg, "augment")
    size = _size(cfg)
    ops: list = []
    if size is not None:
        ops.append(v2.Resize((size, size), antialias=True))
    ops += geometric_augment(aug) + photometric_augment(aug)
    crop = get(cfg, "dataset.crop_size")
    if size is None and crop:
        ops.append(v2.RandomCrop(int(crop), pad_if_needed=True, fill=FILL))
    return WSSSTransform(ops)


def eval_transform(cfg: dict) -> WSSSTransform:
    """Evaluation transform: resize to ``dataset.image_size`` (null: keep the size) and normalize."""
    size = _size(cfg)
    return WSSSTransform([v2.Resize((size, size), antialias=True)] if size is not None else [])


def eval_size(cfg: dict, original: tuple[int, int] | Callable[[], tuple[int, int]]) -> tuple[int, int]:
    """``(H, W)`` of an image of size ``original`` after :func:`eval_transform`. ``original`` may
    be a function giving it, called only when ``dataset.image_size`` is null (the size is then
    the image's own)."""
    size = _size(cfg)
    if size is not None:
        return size, size
    h, w = original() if callable(original) else original
    return int(h), int(w)


def to_normalized_tensor(image: Any) -> torch.Tensor:
    """uint8 [H, W, 3] (or [H, W]) -> float32 [3, H, W] normalized, no resize."""
    img = _rgb(_image_tensor(image).as_subclass(torch.Tensor)).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (img - mean) / std


def denormalize(t: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalization: float [..., 3, H, W] -> float in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=t.dtype, device=t.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=t.dtype, device=t.device).view(3, 1, 1)
    return (t * std + mean).clamp_(0.0, 1.0)
