"""A generic image-level-labelled data set described by one CSV file.

Columns (header required):

- ``image``: image path (PNG/JPEG/..., or ``.dcm`` read with :func:`~wsss_fast.data.dicom.read_dicom`),
  relative to ``root`` (default: the CSV's folder) or absolute;
- labels, either one ``labels`` column holding the positive classes separated by spaces or
  ``;`` (class names, or 0-based indices; empty = no class), or one 0/1 column per class
  (every column that is not ``image``, ``mask``, ``split`` or ``id``);
- ``mask`` (optional): label-map PNG for evaluation (0 = background, c + 1 = class c,
  255 = ignore), same size as the image; may be empty for some rows;
- ``split`` (optional): ``train`` / ``val`` / ``test`` ...;
- ``id`` (optional): image id; default the image file's stem.

Used for data that are neither SIIM-ACR nor VOC, following the same weakly-supervised
setting (Viniavskyi et al., AIME 2020).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .base import BadFileError, BadFilePolicy, WSSSDataset

__all__ = ["GenericCSV"]

_RESERVED = {"image", "mask", "split", "id", "labels"}


class GenericCSV(WSSSDataset):
    """Images + multi-hot labels (+ optional masks) from a CSV.

    Args:
        csv_path: the CSV file.
        split: keep rows whose ``split`` column equals this (None: all rows).
        transform: image transform.
        class_names: class names; required order for a ``labels`` column of names (default:
            sorted names found), taken from the header for per-class columns.
        root: folder the paths are relative to (default: the CSV's folder).
        on_bad_file: ``"raise"`` or ``"skip"``.
    """

    def __init__(self, csv_path: str | Path, split: str | None = None, transform: Callable | None = None, *,
                 class_names: Sequence[str] | None = None, root: str | Path | None = None,
                 on_bad_file: str = "raise") -> None:
        super().__init__(transform)
        self.csv_path = Path(csv_path)
        if not self.csv_path.exists():
            raise FileNotFoundError(f"generic data set CSV not found: {self.csv_path}")
        self.root = Path(root) if root is not None else self.csv_path.parent
        policy = BadFilePolicy(on_bad_file, "generic CSV")
        with open(self.csv_path, newline="") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [(n, {k.strip(): (v or "").strip() for k, v in r.items() if k is not None})
                    for n, r in enumerate(reader, start=2)]
        if "image" not in header:
            raise BadFileError(f"{self.csv_path} row 1: the header needs an 'image' column, got {header}")
        label_cols = [h for h in header if h not in _RESERVED]
        if "labels" in header:
            if class_names is None:
                names = sorted({t for _, r in rows for t in r.get("labels", "").replace(";", " ").split()
                                if not t.isdigit()})
                if not names:
                    raise ValueError(f"{self.csv_path}: the 'labels' column holds indices; give class_names")
                class_names = names
            self.class_names = list(class_names)
        elif label_cols:
            self.class_names = list(class_names) if class_names is not None else label_cols
            if len(self.class_names) != len(label_cols):
                raise ValueError(f"{self.csv_path}: {len(label_cols)} label columns {label_cols} but "
                                 f"{len(self.class_names)} class_names")
        else:
            raise BadFileError(f"{self.csv_path} row 1: no label columns (need 'labels' or one column per class)")
        self.num_classes = len(self.class_names)
        self.split = split
        self._img, self._mask, self._row = {}, {}, {}
        ids, labels = [], []
        for n, r in rows:
            if split is not None and "split" in header and r.get("split") != split:
                continue
            try:
                lab = self._parse_label(r, label_cols, "labels" in header)
            except ValueError as exc:
                policy.bad(f"bad label: {exc}", self.csv_path, n)
                continue
            img = self._path(r["image"])
            if not r["image"] or not img.exists():
                policy.bad("image file is missing", img, n)
                continue
            mask = self._path(r["mask"]) if r.get("mask") else None
            if mask is not None and not mask.exists():
                policy.bad("mask file is missing", mask, n)
                continue
            image_id = r.get("id") or img.stem
            if image_id in self._img:
                policy.bad(f"duplicate image id {image_id!r}", img, n)
                continue
            self._img[image_id], self._mask[image_id], self._row[image_id] = img, mask, n
            if policy.mode == "skip":
                try:
                    self._load(image_id, check_only=True)
                except BadFileError as exc:
                    policy.bad(str(exc), img, n, image_id)
                    del self._img[image_id]
                    continue
            ids.append(image_id)
            labels.append(lab)
        if split is not None and "split" not in header:
            raise ValueError(f"{self.csv_path}: split {split!r} requested but the CSV has no 'split' column")
        self.image_ids = ids
        self.labels = np.stack(labels).astype(np.float32) if labels else np.zeros((0, self.num_classes), np.float32)
        self.has_masks = any(m is not None for m in self._mask.values())
        self.skipped = policy.skipped
        policy.summarize()

    def _path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.root / q

    def _parse_label(self, r: dict, label_cols: list[str], names_column: bool) -> np.ndarray:
        lab = np.zeros(self.num_classes, np.float32)
        if names_column:
            for t in r.get("labels", "").replace(";", " ").split():
                if t.isdigit():
                    k = int(t)
                    if k >= self.num_classes:
                        raise ValueError(f"class index {k} >= {self.num_classes}")
                else:
                    if t not in self.class_names:
                        raise ValueError(f"unknown class {t!r} (known: {self.class_names})")
                    k = self.class_names.index(t)
                lab[k] = 1.0
        else:
            for k, c in enumerate(label_cols):
                v = r.get(c, "")
                if v not in ("0", "1", "0.0", "1.0"):
                    raise ValueError(f"column {c!r} must be 0 or 1, got {v!r}")
                lab[k] = float(v)
        return lab

    def _where(self, image_id: str) -> str:
        return f"{self.csv_path} row {self._row[image_id]}"

    def _load(self, image_id: str, check_only: bool = False):
        path = self._img[image_id]
        try:
            if path.suffix.lower() == ".dcm":
                from .dicom import read_dicom

                img = np.repeat(read_dicom(path)[:, :, None], 3, axis=2)
            else:
                with Image.open(path) as im:
                    img = np.array(im.convert("RGB"))
        except Exception as exc:
            raise BadFileError(f"cannot read image {path} ({self._where(image_id)}): {exc}") from exc
        if check_only and self._mask[image_id] is not None:
            self._load_mask(image_id, img.shape[:2])
        return img

    def _load_mask(self, image_id: str, size: tuple[int, int]) -> np.ndarray:
        path = self._mask[image_id]
        try:
            with Image.open(path) as im:
                m = np.array(im if im.mode in ("P", "L") else im.convert("L"), dtype=np.uint8)
        except Exception as exc:
            raise BadFileError(f"cannot read mask {path} ({self._where(image_id)}): {exc}") from exc
        if m.shape != tuple(size):
            raise BadFileError(f"mask {path} is {m.shape[0]}x{m.shape[1]} but its image {self._img[image_id]} "
                               f"is {size[0]}x{size[1]} ({self._where(image_id)})")
        bad = (m > self.num_classes) & (m != 255)
        if bad.any():
            raise BadFileError(f"mask {path} has values {sorted(np.unique(m[bad]).tolist())[:5]} outside "
                               f"0..{self.num_classes} and 255 ({self._where(image_id)})")
        return m

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i``: uint8 [H0, W0, 3]."""
        return self._load(self.image_ids[i])

    def load_mask(self, i: int) -> np.ndarray | None:
        """Label map of image ``i`` (uint8 [H0, W0]) or None when the row has no mask."""
        image_id = self.image_ids[i]
        if self._mask[image_id] is None:
            return None
        path = self._img[image_id]
        if path.suffix.lower() == ".dcm":
            size = self._load(image_id).shape[:2]
        else:
            with Image.open(path) as im:
                size = (im.height, im.width)
        return self._load_mask(image_id, size)
