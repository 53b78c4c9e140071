"""SIIM-ACR Pneumothorax Segmentation data, in the competition's own layout.

::

    root/dicom-images-train/<StudyUID>/<SeriesUID>/<ImageId>.dcm   (or root/png-images/<ImageId>.png)
    root/train-rle.csv      header "ImageId, EncodedPixels"; "-1" = no pneumothorax;
                            a positive image has one row per region (run-length code, see rle.py)

The image-level label is "has any region"; masks are decoded only for evaluation. The
split follows Viniavskyi et al. (AIME 2020): train 2379 positive / 8296 negative, val
145 / 541, test 145 / 541 on the full 12,047 images, stratified by label, scaled
proportionally for smaller sets, deterministic by seed, written to a JSON file and reused.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .base import BadFilePolicy, BadFileError, WSSSDataset
from .cache import read_cached, resize_uint8, write_cached
from .dicom import read_dicom
from .rle import RLEError, is_empty_rle, parse_rle, rle_decode_union

__all__ = ["SIIMPneumothorax", "stratified_split", "PAPER_SPLIT_COUNTS"]

PAPER_SPLIT_COUNTS: dict[str, tuple[int, int]] = {"train": (2379, 8296), "val": (145, 541),
                                                  "test": (145, 541)}
CSV_NAMES = ("train-rle.csv", "stage_2_train.csv")


def _allocate(n: int, weights: Sequence[float]) -> list[int]:
    """Split n items in proportion to weights (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = n * w / w.sum()
    out = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - out), kind="stable")[: n - out.sum()]:
        out[k] += 1
    return out.tolist()


def stratified_split(image_ids: Sequence[str], positive: Sequence[bool],
                     counts: dict[str, Sequence[int]] | None = None, seed: int = 0) -> dict[str, list[str]]:
    """Deterministic label-stratified split.

    Each class (positive, negative) is shuffled by ``seed`` and cut in proportion to
    ``counts`` (the paper's by default). The exact counts result on the full 12,047-image
    SIIM set (2,669 positive / 9,378 negative); smaller sets are scaled. Every split other
    than the first gets at least one image of a class that has three or more.

    Args:
        image_ids: ids (order does not matter: they are sorted first).
        positive: label of each id.
        counts: split name -> (positive, negative) counts; the first split is the train split.
        seed: shuffling seed.

    Returns:
        split name -> sorted list of ids.
    """
    counts = {k: tuple(v) for k, v in (counts or PAPER_SPLIT_COUNTS).items()}
    names = list(counts)
    order = sorted(range(len(image_ids)), key=lambda i: image_ids[i])
    pos = [image_ids[i] for i in order if positive[i]]
    neg = [image_ids[i] for i in order if not positive[i]]
    out: dict[str, list[str]] = {k: [] for k in names}
    for cls_i, ids in ((0, pos), (1, neg)):
        rng = np.random.default_rng([seed, cls_i, 2718])
        perm = [ids[j] for j in rng.permutation(len(ids))]
        alloc = _allocate(len(perm), [counts[k][cls_i] for k in names])
        if len(perm) >= 3:
            for k in range(1, len(names)):
                if alloc[k] == 0 and counts[names[k]][cls_i] > 0 and alloc[0] > 1:
                    alloc[k] += 1
                    alloc[0] -= 1
        start = 0
        for k, n in zip(names, alloc):
            out[k].extend(perm[start:start + n])
            start += n
    return {k: sorted(v) for k, v in out.items()}


class SIIMPneumothorax(WSSSDataset):
    """The SIIM-ACR Pneumothorax data set (DICOM or PNG images + ``train-rle.csv``).

    Args:
        root: folder with ``dicom-images-train/`` (or ``png-images/``) and ``train-rle.csv``.
        split: ``"train"``, ``"val"``, ``"test"`` or None (all images).
        transform: image transform (see :mod:`wsss_fast.data.transforms`).
        split_file: JSON file holding the split; written on first use, then reused. None:
            the split is computed in memory (deterministically) and not saved.
        split_counts: split -> (positive, negative) proportions; the paper's by default.
        seed: split seed.
        image_format: ``"auto"`` (DICOM when ``dicom-images-train/`` exists, else PNG),
            ``"dicom"`` or ``"png"``.
        image_dir: override the image folder (relative to root or absolute).
        csv_file: override the CSV (relative to root or absolute).
        on_bad_file: ``"raise"``: a missing image, malformed RLE row, corrupt DICOM or a
            mask that does not fit its image raises :class:`BadFileError` naming the file and
            CSV row. ``"skip"``: every image is checked once at construction (a progress bar),
            bad ones are left out, counted in ``skipped`` and reported in one warning.
        progress: show a progress bar for the skip-mode check.
        cache_dir: folder of the decoded-image cache (:mod:`wsss_fast.data.cache`); None = off.
            Images are then decoded once, resized to ``cache_size`` and reused; ``load_image``
            returns the cached (resized) image and :meth:`original_size` the file's size.
        cache_size: the working resolution the cache stores (None = the original size).

    Items follow the pipeline contract: ``image`` float [3, H, W], ``label`` float [1],
    ``image_id``, ``mask`` uint8 [H0, W0] (0/1), ``orig_size``.
    """

    num_classes = 1
    class_names = ["pneumothorax"]

    def __init__(self, root: str | Path, split: str | None = None, transform: Callable | None = None, *,
                 split_file: str | Path | None = None,
                 split_counts: dict[str, Sequence[int]] | None = None, seed: int = 0,
                 image_format: str = "auto", image_dir: str | Path | None = None,
                 csv_file: str | Path | None = None, on_bad_file: str = "raise", progress: bool = True,
                 cache_dir: str | Path | None = None, cache_size: int | None = None) -> None:
        super().__init__(transform)
        self.root = Path(root)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.cache_size = None if cache_size is None else int(cache_size)
        if not self.root.is_dir():
            raise FileNotFoundError(f"SIIM root folder not found: {self.root}")
        self.split = split
        self._policy = BadFilePolicy(on_bad_file, "SIIM")
        self.csv_file = self._find_csv(csv_file)
        self.image_format, self.image_dir = self._find_images(image_format, image_dir)
        rows = self._read_csv()
        files = self._index_files()

        ids, self._rles, self._rows, self._files = [], {}, {}, {}
        for image_id, entries in rows.items():
            first_row = entries[0][0]
            path = files.get(image_id)
            if path is None:
                expected = self.image_dir / (f"<study>/<series>/{image_id}.dcm" if self.image_format == "dicom"
                                             else f"{image_id}.png")
                self._policy.bad("image file is missing", expected, first_row, image_id)
                continue
            ids.append(image_id)
            self._rles[image_id] = [r for _, r in entries if not is_empty_rle(r)]
            self._rows[image_id] = [n for n, _ in entries]
            self._files[image_id] = path
        self.unlabeled = sorted(set(files) - set(rows) - self._bad_csv_ids)
        if self.unlabeled:
            warnings.warn(f"SIIM: {len(self.unlabeled)} image(s) in {self.image_dir} have no row in "
                          f"{self.csv_file.name} and are not used (first: {self.unlabeled[0]})",
                          RuntimeWarning, stacklevel=2)
        self._sizes: dict[str, tuple[int, int]] = {}
        if self._policy.mode == "skip":
            ids = self._check_all(ids, progress)
        self.image_ids = sorted(ids)
        self.labels = np.array([[1.0 if self._rles[i] else 0.0] for i in self.image_ids],
                               dtype=np.float32).reshape(-1, 1)
        self.split_file = None if split_file is None else Path(split_file)
        self.split_counts = split_counts
        self.seed = seed
        if split is not None and split != "all":
            keep = set(self._split_ids(split))
            self._select([n for n, k in enumerate(self.image_ids) if k in keep])
        self.skipped = self._policy.skipped
        self._policy.summarize()

    # ----------------------------------------------------------------- discovery
    def _find_csv(self, csv_file) -> Path:
        if csv_file is not None:
            p = Path(csv_file)
            p = p if p.is_absolute() else self.root / p
            if not p.exists():
                raise FileNotFoundError(f"SIIM label CSV not found: {p}")
            return p
        for name in CSV_NAMES:
            if (self.root / name).exists():
                return self.root / name
        raise FileNotFoundError(f"SIIM label CSV not found: expected {self.root / CSV_NAMES[0]} "
                                f"(or {CSV_NAMES[1]})")

    def _find_images(self, image_format: str, image_dir) -> tuple[str, Path]:
        if image_format not in ("auto", "dicom", "png"):
            raise ValueError(f"image_format must be 'auto', 'dicom' or 'png', got {image_format!r}")
        if image_dir is not None:
            d = Path(image_dir)
            d = d if d.is_absolute() else self.root / d
            if image_format == "auto":
                image_format = "dicom" if any(d.rglob("*.dcm")) else "png"
        else:
            dicom_dir, png_dir = self.root / "dicom-images-train", self.root / "png-images"
            if image_format == "auto":
                image_format = "dicom" if dicom_dir.is_dir() else "png"
            d = dicom_dir if image_format == "dicom" else png_dir
        if not d.is_dir():
            raise FileNotFoundError(f"SIIM image folder not found: {d} (expected dicom-images-train/ "
                                    f"or png-images/ under {self.root})")
        return image_format, d

    def _read_csv(self) -> dict[str, list[tuple[int, str]]]:
        rows: dict[str, list[tuple[int, str]]] = {}
        bad_ids: set[str] = set()
        with open(self.csv_file, newline="", encoding="utf-8-sig") as f:  # a byte-order mark is no header
            reader = csv.reader(f, skipinitialspace=True)
            header = [h.strip() for h in next(reader, [])]
            if "ImageId" not in header or "EncodedPixels" not in header:
                raise BadFileError(f"SIIM: {self.csv_file} row 1: header must name 'ImageId' and "
                                   f"'EncodedPixels', got {header}")
            ci, cr = header.index("ImageId"), header.index("EncodedPixels")
            for n, rec in enumerate(reader, start=2):
                if not rec or all(not c.strip() for c in rec):
                    continue
                image_id = rec[ci].strip() if len(rec) > ci else ""
                if len(rec) != len(header) or not image_id:
                    why = f"{len(rec)} columns, the header has {len(header)}" if image_id else "no ImageId"
                    self._policy.bad(f"malformed CSV row {rec!r} ({why})", self.csv_file, n, image_id or None)
                    if image_id:  # the image may have lost a region row: it is skipped as a whole
                        bad_ids.add(image_id)
                    continue
                code = rec[cr].strip()
                try:
                    parse_rle(code)
                except RLEError as exc:
                    self._policy.bad(f"malformed run-length code: {exc}", self.csv_file, n, image_id)
                    bad_ids.add(image_id)
                    continue
                rows.setdefault(image_id, []).append((n, code))
        self._bad_csv_ids = set(bad_ids)
        for image_id in list(rows):
            entries = rows[image_id]
            empty = [is_empty_rle(c) for _, c in entries]
            if image_id in bad_ids:  # an image with a bad row is skipped as a whole
                del rows[image_id]
            elif any(empty) and not all(empty):
                self._policy.bad("image has both a '-1' row and region rows", self.csv_file,
                                 entries[0][0], image_id)
                del rows[image_id]
                self._bad_csv_ids.add(image_id)
        return rows

    def _index_files(self) -> dict[str, Path]:
        pattern = "*.dcm" if self.image_format == "dicom" else "*.png"
        files: dict[str, Path] = {}
        for p in sorted(self.image_dir.rglob(pattern)):
            files.setdefault(p.stem, p)
        return files

    def _check_all(self, ids: list[str], progress: bool) -> list[str]:
        from tqdm import tqdm

        good = []
        for image_id in tqdm(ids, desc="checking SIIM files", disable=not progress, leave=False):
            try:
                self._read(image_id)
                self._decode(image_id, self._size(image_id))
            except BadFileError as exc:
                self._policy.skipped.append({"reason": str(exc), "file": str(self._files[image_id]),
                                             "row": self._rows[image_id][0], "image_id": image_id,
                                             "message": str(exc)})
                continue
            good.append(image_id)
        return good

    # ----------------------------------------------------------------- split
    def _split_ids(self, split: str) -> list[str]:
        if self.split_file is not None and self.split_file.exists():
            data = json.loads(self.split_file.read_text())
            splits = data.get("splits", data)
            if split not in splits:
                raise KeyError(f"split '{split}' not in {self.split_file} (has {sorted(splits)})")
            known = set(self.image_ids) | {s["image_id"] for s in self._policy.skipped if s.get("image_id")}
            unknown = [k for k in splits[split] if k not in known]
            if unknown:
                raise BadFileError(f"SIIM: split file {self.split_file} lists {len(unknown)} image(s) of "
                                   f"'{split}' that are not in {self.csv_file} (first: {unknown[0]}); it "
                                   f"belongs to another data set: delete it to make a new split")
            return list(splits[split])
        splits = stratified_split(self.image_ids, [bool(x) for x in self.labels[:, 0]],
                                  self.split_counts, self.seed)
        if split not in splits:
            raise KeyError(f"unknown split '{split}'; expected one of {sorted(splits)} or None")
        if self.split_file is not None:
            from ..engine.files import atomic_write_bytes

            payload = {"dataset": "siim", "seed": self.seed,
                       "counts": {k: list(v) for k, v in (self.split_counts or PAPER_SPLIT_COUNTS).items()},
                       "num_images": len(self.image_ids),
                       "num_positive": {k: int(sum(self.labels[self.index_of(i), 0] for i in v))
                                        for k, v in splits.items()},
                       "splits": splits}
            atomic_write_bytes(json.dumps(payload, indent=1).encode(), self.split_file)
        return splits[split]

    # ----------------------------------------------------------------- loading
    def _where(self, image_id: str) -> str:
        return f"file {self._files[image_id]}, {self.csv_file.name} row(s) {self._rows[image_id]}"

    def _read(self, image_id: str) -> np.ndarray:
        if self.cache_dir is None:
            return self._read_file(image_id)
        cached = self.cache_dir / f"{image_id}.npz"
        hit = read_cached(cached)
        if hit is not None:
            self._sizes[image_id] = hit[1]
            return hit[0]
        img = self._read_file(image_id)
        small = img if self.cache_size is None else resize_uint8(img, self.cache_size)
        write_cached(cached, small, img.shape[:2])
        return small

    def _read_file(self, image_id: str) -> np.ndarray:
        path = self._files[image_id]
        try:
            if self.image_format == "dicom":
                img = read_dicom(path)
            else:
                from PIL import Image

                with Image.open(path) as im:
                    img = np.array(im.convert("L"))
        except Exception as exc:
            raise BadFileError(f"SIIM: cannot read image {image_id} ({self._where(image_id)}): {exc}") from exc
        self._sizes[image_id] = img.shape[:2]
        return img

    def _size(self, image_id: str) -> tuple[int, int]:
        if image_id not in self._sizes:
            path = self._files[image_id]
            try:
                if self.image_format == "dicom":
                    import pydicom

                    ds = pydicom.dcmread(path, stop_before_pixels=True)
                    self._sizes[image_id] = (int(ds.Rows), int(ds.Columns))
                else:
                    from PIL import Image

                    with Image.open(path) as im:
                        self._sizes[image_id] = (im.height, im.width)
            except Exception as exc:
                raise BadFileError(f"SIIM: cannot read the header of {image_id} ({self._where(image_id)}): "
                                   f"{exc}") from exc
        return self._sizes[image_id]

    def _decode(self, image_id: str, size: tuple[int, int]) -> np.ndarray:
        h, w = size
        out = np.zeros((h, w), dtype=np.uint8)
        # a positive image's rows are all region rows, so rows and codes align
        for row, code in zip(self._rows[image_id], self._rles[image_id]):
            try:
                out |= rle_decode_union([code], h, w)
            except RLEError as exc:
                raise BadFileError(f"SIIM: mask does not fit image {image_id} ({h}x{w}): {exc} "
                                   f"(file {self.csv_file}, CSV row {row}; image {self._files[image_id]})") from exc
        return out

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 [H0, W0, 3] (the grayscale radiograph stacked 3 times; [S, S, 3] at
        the cache's working size when the cache is on: :meth:`original_size` gives H0, W0)."""
        img = self._read(self.image_ids[i])
        return np.repeat(img[:, :, None], 3, axis=2)

    def load_grey(self, i: int) -> np.ndarray:
        """Image ``i`` as the grey uint8 [H0, W0] radiograph ([S, S] when cached)."""
        return self._read(self.image_ids[i])

    def original_size(self, i: int, image: np.ndarray | None = None) -> tuple[int, int]:
        """(H0, W0) of image ``i`` in its file (the cache may hold it resized)."""
        return tuple(int(v) for v in self._size(self.image_ids[i]))

    def load_mask(self, i: int) -> np.ndarray:
        """Pneumothorax mask of image ``i``: uint8 [H0, W0], 0/1 (union of the regions)."""
        image_id = self.image_ids[i]
        return self._decode(image_id, self._size(image_id))
