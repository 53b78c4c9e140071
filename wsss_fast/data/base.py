"""Shared base of every data set (SIIM-ACR, PASCAL VOC, generic CSV) and bad-file handling.

The item contract of the pipeline: ``image`` float32
[3, H, W] normalized with ImageNet statistics after the transform, ``label`` float32 [N]
multi-hot, ``image_id``, ``orig_size`` (H0, W0) and, when ground truth exists, ``mask``
uint8 [H0, W0] (0 = background, c + 1 = class c, 255 = ignore) at the original resolution,
for evaluation only.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["WSSSDataset", "BadFileError", "BadFilePolicy", "wsss_collate"]


class BadFileError(RuntimeError):
    """A data file is missing, corrupt or inconsistent; the message names the file and CSV row."""


class BadFilePolicy:
    """``on_bad_file`` handling: ``raise`` (default) or ``skip`` (counted, one warning).

    Args:
        mode: ``"raise"`` or ``"skip"``.
        dataset: the data set's name, for messages.
    """

    def __init__(self, mode: str = "raise", dataset: str = "dataset") -> None:
        if mode not in ("raise", "skip"):
            raise ValueError(f"dataset.on_bad_file must be 'raise' or 'skip', got {mode!r}")
        self.mode = mode
        self.dataset = dataset
        self.skipped: list[dict[str, Any]] = []

    def bad(self, reason: str, file: Any = None, row: int | None = None, image_id: str | None = None) -> None:
        """Report one bad file: raise, or record it for the summary warning."""
        where = []
        if file is not None:
            where.append(f"file {file}")
        if row is not None:
            where.append(f"CSV row {row}")
        if image_id is not None:
            where.append(f"image {image_id}")
        msg = f"{self.dataset}: {reason} ({', '.join(where)})"
        if self.mode == "raise":
            raise BadFileError(msg + "; set dataset.on_bad_file=skip to skip such files")
        self.skipped.append({"reason": reason, "file": None if file is None else str(file), "row": row,
                             "image_id": image_id, "message": msg})

    def summarize(self) -> None:
        """Emit ONE warning that counts the skipped files (nothing when none were skipped)."""
        if self.skipped:
            first = "; ".join(s["message"] for s in self.skipped[:3])
            warnings.warn(f"{self.dataset}: skipped {len(self.skipped)} bad file(s) "
                          f"(dataset.on_bad_file=skip). First: {first}. Full list in dataset.skipped.",
                          RuntimeWarning, stacklevel=3)


class WSSSDataset(Dataset):
    """Base class: subclasses fill ``image_ids``, ``labels`` and implement
    :meth:`load_image` / :meth:`load_mask`.

    Attributes:
        image_ids: list[str], one per item.
        labels: float32 [len, N] multi-hot image-level labels (no image decoding needed).
        num_classes: N, the number of foreground classes.
        class_names: N names.
        transform: callable ``transform(image uint8 [H0, W0, 3]) -> float tensor [3, H, W]``
            (see :mod:`wsss_fast.data.transforms`); None = to-tensor + ImageNet normalization.
        skipped: the bad files skipped with ``on_bad_file=skip`` (dicts: reason, file, row, image_id).
    """

    image_ids: list[str]
    labels: np.ndarray
    num_classes: int
    class_names: list[str]
    has_masks: bool = True

    def __init__(self, transform: Callable | None = None) -> None:
        self.transform = transform
        self.skipped: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        """Raw image ``i``: uint8 [H0, W0, 3] RGB (grayscale stacked to 3 channels)."""
        raise NotImplementedError

    def load_grey(self, i: int) -> np.ndarray | None:
        """Image ``i`` as uint8 [H0, W0] when the data set is greyscale (the transforms then
        work on one channel instead of three equal ones), else None."""
        return None

    def original_size(self, i: int, image: np.ndarray | None = None) -> tuple[int, int]:
        """(H0, W0) of image ``i`` as stored (masks and predictions are at this size).

        Args:
            i: the item.
            image: what :meth:`load_image` returned for it, when at hand. Data sets whose
                ``load_image`` may return a resized copy (the decoded cache) override this.
        """
        if image is None:
            image = self.load_image(i)
        return int(image.shape[0]), int(image.shape[1])

    def load_mask(self, i: int) -> np.ndarray | None:  # pragma: no cover - abstract
        """Ground-truth label map of image ``i``: uint8 [H0, W0], or None without ground truth."""
        raise NotImplementedError

    def index_of(self, image_id: str) -> int:
        """Position of ``image_id``."""
        if not hasattr(self, "_index") or len(self._index) != len(self.image_ids):
            self._index = {k: n for n, k in enumerate(self.image_ids)}
        return self._index[image_id]

    def with_transform(self, transform: Callable | None) -> "WSSSDataset":
        """A shallow copy that applies another transform (the data are shared)."""
        out = copy.copy(self)
        out.transform = transform
        return out

    def subset(self, indices: Sequence[int]) -> "WSSSDataset":
        """A shallow copy restricted to ``indices`` (order kept)."""
        out = copy.copy(self)
        idx = [int(i) for i in indices]
        out._select(idx)
        return out

    def _select(self, idx: list[int]) -> None:
        self.image_ids = [self.image_ids[i] for i in idx]
        self.labels = self.labels[idx]
        self._index = {}

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        if self.transform is not None:
            return self.transform(image)
        from .transforms import to_normalized_tensor

        return to_normalized_tensor(image)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a data set of {len(self)} images")
        i = int(i) % len(self)
        grey = self.load_grey(i)
        image = self.load_image(i) if grey is None else grey
        h0, w0 = self.original_size(i, image)
        item: dict[str, Any] = {
            "image": self._to_tensor(image),
            "label": torch.from_numpy(np.asarray(self.labels[i], dtype=np.float32).copy()),
            "image_id": self.image_ids[i],
            "orig_size": (int(h0), int(w0)),
        }
        if self.has_masks:
            mask = self.load_mask(i)
            if mask is not None:
                m = np.asarray(mask, dtype=np.uint8)
                if not m.flags.writeable or not m.flags.c_contiguous:
                    m = m.copy(order="C")
                item["mask"] = torch.from_numpy(m)
        return item


def without_masks(ds: Dataset) -> Dataset:
    """A shallow copy of ``ds`` whose items skip the ground-truth masks (training, CAMs and the
    walk never read them; decoding SIIM's RLE masks costs milliseconds per image)."""
    ds = copy.copy(ds)
    if hasattr(ds, "has_masks"):
        ds.has_masks = False
    return ds


def as_is(batch: Any) -> Any:
    """A DataLoader ``collate_fn`` that hands the items (a batch's list, or one item with
    ``batch_size=None``) over as they are: no stacking, numpy arrays stay arrays."""
    return batch


def wsss_collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate items whose masks differ in size (VOC): images and labels are stacked,
    ``image_id``, ``orig_size`` and ``mask`` stay lists.

    Returns:
        dict with ``image`` [B, 3, H, W], ``label`` [B, N], ``image_id`` list[str],
        ``orig_size`` list[tuple], and ``mask`` list[uint8 tensor [H0, W0]] when present.
    """
    out: dict[str, Any] = {
        "image": torch.stack([b["image"] for b in batch]),
        "label": torch.stack([b["label"] for b in batch]),
        "image_id": [b["image_id"] for b in batch],
        "orig_size": [b["orig_size"] for b in batch],
    }
    if all("mask" in b for b in batch):
        out["mask"] = [b["mask"] for b in batch]
    return out
