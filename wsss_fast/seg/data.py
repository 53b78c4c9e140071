"""Data for step 3: images with their IRNet pseudo labels, jointly augmented.

Viniavskyi et al. (AIME 2020) train the segmentation network on the random-walk pseudo
labels with the same augmentations as the classifier (scale, rotation, flip,
brightness/contrast, blur). Geometric transforms are applied to the image and the label
map together through ``torchvision.transforms.v2`` and ``tv_tensors.Mask``; pixels that
leave the image become 255 (ignored by the loss).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..config import get
from ..engine.files import read_png
from ..data.transforms import FILL, IMAGENET_MEAN, IMAGENET_STD, geometric_augment, photometric_augment

IGNORE = 255


def seg_image_size(cfg: dict) -> int | None:
    """Side of the square images step 3 trains and predicts at (None: original size).

    ``seg.image_size`` when set, else ``dataset.image_size``.
    """
    size = get(cfg, "seg.image_size")
    if size is None:
        size = get(cfg, "dataset.image_size")
    return None if size is None else int(size)


def train_transform(cfg: dict) -> v2.Compose:
    """Joint augmentation of (tv_tensors.Image uint8 [3,H,W], tv_tensors.Mask uint8 [H,W]):
    resize to :func:`seg_image_size`, the ``augment`` section's geometric transforms (the
    classifier's, :func:`wsss_fast.data.transforms.geometric_augment`), a random
    ``seg.crop_size`` crop, then its photometric transforms and normalization."""
    aug = get(cfg, "augment")
    size = seg_image_size(cfg)
    t: list = []
    if size:
        t.append(v2.Resize((size, size), antialias=True))
    t += geometric_augment(aug)
    crop = get(cfg, "seg.crop_size")
    if crop:
        t.append(v2.RandomCrop(int(crop), pad_if_needed=True, fill=FILL))
    t += photometric_augment(aug)
    t += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
          v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(t)


def eval_transform(cfg: dict) -> v2.Compose:
    """Resize (when a size is set) and normalize a tv_tensors.Image uint8 [3,H,W]."""
    size = seg_image_size(cfg)
    t: list = [v2.Resize((size, size), antialias=True)] if size else []
    t += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(t)


def _load(base, i: int) -> np.ndarray:
    """uint8 [H, W] (greyscale data sets: the transform works on one channel) or [H, W, 3]."""
    grey = base.load_grey(i) if hasattr(base, "load_grey") else None
    return base.load_image(i) if grey is None else grey


def _to_image(rgb: np.ndarray) -> tv_tensors.Image:
    """[1, H, W] for a grey [H, W] array (stacked to 3 channels by the transform), else [3, H, W]."""
    if rgb.ndim == 2:
        rgb = rgb[:, :, None]
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1))


class PseudoLabelDataset(Dataset):
    """Training pairs (image, pseudo label) for step 3; never reads ground-truth masks.

    Args:
        base: a ``wsss_fast.data`` dataset (``image_ids``, ``load_image`` and ``load_grey`` are used).
        label_dir: folder of ``<image_id>.png`` pseudo labels at the original resolution.
        transform: a joint transform such as :func:`train_transform`.
        indices: the dataset indices to use (default: all).

    Items are dicts: ``image`` float32 [3, S, S], ``mask`` int64 [S, S], ``index`` int.
    """

    def __init__(self, base, label_dir: Path, transform, indices: Sequence[int] | None = None) -> None:
        self.base = base
        self.label_dir = Path(label_dir)
        self.transform = transform
        self.indices = list(range(len(base.image_ids))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        idx = self.indices[i]
        rgb = _load(self.base, idx)
        label = read_png(self.label_dir / f"{self.base.image_ids[idx]}.png")
        if label.shape != rgb.shape[:2]:
            label = np.array(PILImage.fromarray(label).resize(rgb.shape[1::-1], PILImage.NEAREST))
        image, mask = self.transform(_to_image(rgb), tv_tensors.Mask(torch.from_numpy(label)))
        return {"image": image.as_subclass(torch.Tensor),
                "mask": mask.as_subclass(torch.Tensor).long(), "index": idx}


class ImageDataset(Dataset):
    """Evaluation images: ``image`` float32 [3, S, S], ``index``, ``orig_size`` (H0, W0)."""

    def __init__(self, base, transform) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base.image_ids)

    def __getitem__(self, i: int) -> dict:
        rgb = _load(self.base, i)
        image = self.transform(_to_image(rgb))
        return {"image": image.as_subclass(torch.Tensor), "index": i,
                "orig_size": torch.tensor(self.base.original_size(i, rgb) if hasattr(self.base, "original_size")
                                          else rgb.shape[:2])}
