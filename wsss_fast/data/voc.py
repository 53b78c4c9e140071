"""PASCAL VOC 2012 with SBD's augmented masks, as IRNet (Ahn et al., CVPR 2019) reads it.

::

    root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2012/SegmentationClassAug/<id>.png     (SBD + VOC masks, 0..20, 255)
    root/VOCdevkit/VOC2012/SegmentationClass/<id>.png        (official masks; used when Aug lacks one)
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/{train_aug,train,val,test}.txt

``root`` may also be ``VOCdevkit`` or ``VOC2012`` itself. List files hold one id per line;
IRNet's ``JPEGImages/<id>.jpg SegmentationClassAug/<id>.png`` lines are accepted too.
The image-level labels (VOC's 20 classes, or ``num_classes`` of a set in the same layout
such as :mod:`wsss_fast.data.synthetic_voc`) come from a ``cls_labels.npy`` (IRNet's format:
a dict keyed by the id, as a string or as IRNet's integer encoding ``2007000032``), or from
the masks as IRNet's ``make_cls_labels`` computes them (every class present in the mask, 255
excluded). Masks keep 255 (object boundaries) as the ignore label for evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .base import BadFileError, BadFilePolicy, WSSSDataset

__all__ = ["VOC2012", "VOC_CLASSES", "make_cls_labels"]

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


def _resolve_root(root: Path) -> Path:
    for cand in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise FileNotFoundError(f"VOC 2012 not found under {root}: expected {root / 'VOCdevkit/VOC2012/JPEGImages'}")


def _read_list(path: Path) -> list[str]:
    ids = []
    for line in path.read_text().splitlines():
        tok = line.strip().split()
        if tok:
            ids.append(Path(tok[0]).stem)
    return ids


def _labels_from_mask(mask: np.ndarray, n: int = 20) -> np.ndarray:
    """float32 [n] multi-hot of the classes in ``mask`` (uint8 [H, W]; 0 = bg, 255 = ignore).

    Raises:
        BadFileError: the mask holds a class id above ``n`` (other than 255).
    """
    vals = np.unique(mask)
    if ((vals > n) & (vals != 255)).any():
        raise BadFileError(f"mask holds class ids {vals[(vals > n) & (vals != 255)].tolist()} above "
                           f"num_classes={n}")
    vals = vals[(vals >= 1) & (vals <= n)]
    lab = np.zeros(n, np.float32)
    lab[vals.astype(int) - 1] = 1.0
    return lab


def _int_id(image_id: str) -> int | None:
    s = image_id.replace("_", "")
    return int(s) if s.isdigit() else None


class VOC2012(WSSSDataset):
    """PASCAL VOC 2012 segmentation data with image-level labels.

    Args:
        root: folder holding ``VOCdevkit/VOC2012`` (or that folder itself).
        split: ``"train_aug"`` (10,582 images), ``"train"``, ``"val"`` (1,449 images) or
            ``"test"`` (a list file must exist; images without masks have no ``mask``).
        transform: image transform.
        cls_labels: IRNet's ``cls_labels.npy``; None derives labels from the masks.
        list_file: override the split's list file.
        on_bad_file: ``"raise"`` or ``"skip"`` (see :class:`~wsss_fast.data.base.BadFilePolicy`).
        progress: progress bar while labels are derived from masks / files are checked.
        num_classes: N, the foreground classes (VOC: 20); mask values above N (other than
            255) are bad files.
        class_names: N names; None: VOC's 20 names when N = 20, else ``class1`` .. ``classN``.
    """

    num_classes = 20
    class_names = VOC_CLASSES

    def __init__(self, root: str | Path, split: str = "train_aug", transform: Callable | None = None, *,
                 cls_labels: str | Path | None = None, list_file: str | Path | None = None,
                 on_bad_file: str = "raise", progress: bool = True, num_classes: int = 20,
                 class_names: Sequence[str] | None = None) -> None:
        super().__init__(transform)
        from tqdm import tqdm

        n_cls = int(num_classes)
        if n_cls < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is None:
            class_names = VOC_CLASSES if n_cls == len(VOC_CLASSES) else [f"class{k}" for k in range(1, n_cls + 1)]
        if len(class_names) != n_cls:
            raise ValueError(f"{len(class_names)} class_names for num_classes={n_cls}")
        self.num_classes, self.class_names = n_cls, list(class_names)
        self.root = _resolve_root(Path(root))
        self.split = split
        policy = BadFilePolicy(on_bad_file, "VOC2012")
        lst = Path(list_file) if list_file else self._list_path(split)
        ids = _read_list(lst)
        cls_dict = None
        if cls_labels is not None:
            p = Path(cls_labels)
            if not p.exists():
                raise FileNotFoundError(f"cls_labels file not found: {p}")
            cls_dict = np.load(p, allow_pickle=True).item()
        self._img, self._mask, labels, keep = {}, {}, [], []
        for n, image_id in enumerate(tqdm(ids, desc=f"VOC {split}", disable=not progress, leave=False), start=1):
            img = self.root / "JPEGImages" / f"{image_id}.jpg"
            mask = self._find_mask(image_id)
            if not img.exists():
                policy.bad("image file is missing", img, None, image_id)
                continue
            try:
                if cls_dict is not None:
                    key = image_id if image_id in cls_dict else _int_id(image_id)
                    if key not in cls_dict:
                        raise BadFileError(f"no entry for {image_id} in {cls_labels}")
                    lab = np.asarray(cls_dict[key], np.float32).reshape(-1)
                    if lab.size != n_cls:
                        raise BadFileError(f"{cls_labels}[{image_id}] has {lab.size} labels, expected {n_cls}")
                elif mask is not None:
                    lab = _labels_from_mask(self._read_mask(mask, image_id), n_cls)
                else:
                    raise BadFileError(f"no mask for {image_id} in SegmentationClassAug/ or SegmentationClass/ "
                                       f"and no cls_labels file to take its labels from")
                if policy.mode == "skip":
                    self._check(img, mask, image_id)
            except BadFileError as exc:
                policy.bad(str(exc), mask or img, None, image_id)
                continue
            self._img[image_id], self._mask[image_id] = img, mask
            labels.append(lab)
            keep.append(image_id)
        self.image_ids = keep
        self.labels = np.stack(labels).astype(np.float32) if labels else np.zeros((0, n_cls), np.float32)
        self.has_masks = any(m is not None for m in self._mask.values())
        self.list_file = lst
        self.skipped = policy.skipped
        policy.summarize()

    def _list_path(self, split: str) -> Path:
        for cand in (self.root / "ImageSets" / "Segmentation" / f"{split}.txt", self.root / f"{split}.txt",
                     self.root.parent / f"{split}.txt"):
            if cand.exists():
                return cand
        raise FileNotFoundError(f"VOC list for split '{split}' not found: expected "
                                f"{self.root / 'ImageSets/Segmentation' / (split + '.txt')}")

    def _find_mask(self, image_id: str) -> Path | None:
        for d in ("SegmentationClassAug", "SegmentationClass"):
            p = self.root / d / f"{image_id}.png"
            if p.exists():
                return p
        return None

    @staticmethod
    def _read_mask(path: Path, image_id: str) -> np.ndarray:
        try:
            with Image.open(path) as im:
                if im.mode not in ("P", "L"):
                    raise BadFileError(f"mask {path} has mode {im.mode}; expected a palette or "
                                       f"8-bit label map")
                return np.array(im, dtype=np.uint8)
        except BadFileError:
            raise
        except Exception as exc:
            raise BadFileError(f"cannot read mask {path} of {image_id}: {exc}") from exc

    def _check(self, img: Path, mask: Path | None, image_id: str) -> None:
        try:
            with Image.open(img) as im:
                im.load()
                size = (im.height, im.width)
        except Exception as exc:
            raise BadFileError(f"cannot read image {img}: {exc}") from exc
        if mask is not None:
            m = self._read_mask(mask, image_id)
            if m.shape != size:
                raise BadFileError(f"mask {mask} is {m.shape[0]}x{m.shape[1]} but image {img} is "
                                   f"{size[0]}x{size[1]}")

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i``: uint8 [H0, W0, 3] RGB."""
        path = self._img[self.image_ids[i]]
        try:
            with Image.open(path) as im:
                return np.array(im.convert("RGB"))
        except Exception as exc:
            raise BadFileError(f"VOC2012: cannot read image {path}: {exc}") from exc

    def load_mask(self, i: int) -> np.ndarray | None:
        """Label map of image ``i``: uint8 [H0, W0], 0 = background, c + 1 = class c, 255 = ignore."""
        image_id = self.image_ids[i]
        path = self._mask[image_id]
        if path is None:
            return None
        m = self._read_mask(path, image_id)
        with Image.open(self._img[image_id]) as im:
            size = (im.height, im.width)
        if m.shape != size:
            raise BadFileError(f"VOC2012: mask {path} is {m.shape[0]}x{m.shape[1]} but image "
                               f"{self._img[image_id]} is {size[0]}x{size[1]}")
        return m


def make_cls_labels(root: str | Path, out: str | Path, splits=("train_aug", "val"), num_classes: int = 20) -> Path:
    """Write IRNet's ``cls_labels.npy`` (dict: id -> float32 [num_classes]) from the masks of ``splits``."""
    from ..engine.files import atomic_write_bytes
    import io

    d = {}
    for split in splits:
        ds = VOC2012(root, split, num_classes=num_classes)
        for image_id, lab in zip(ds.image_ids, ds.labels):
            d[image_id] = lab
    buf = io.BytesIO()
    np.save(buf, d, allow_pickle=True)
    atomic_write_bytes(buf.getvalue(), out)
    return Path(out)
