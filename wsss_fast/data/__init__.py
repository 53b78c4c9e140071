"""wsss_fast.data: data sets, transforms and samplers of the pipeline.

``build_dataset(cfg, split, paths, train)`` returns the configured data set (SIIM-ACR,
PASCAL VOC 2012, generic CSV, the built-in synthetic radiographs written in the SIIM
layout, or the built-in synthetic multi-class scenes written in the VOC layout) with the
train or eval transform. See :mod:`wsss_fast.data.base` for the item format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import get
from .base import BadFileError, WSSSDataset, as_is, without_masks, wsss_collate
from .dicom import DicomReadError, read_dicom
from .rle import RLEError, rle_decode, rle_decode_union, rle_encode, rle_encode_regions
from .sampler import BalancedBatchSampler
from .siim import PAPER_SPLIT_COUNTS, SIIMPneumothorax, stratified_split
from .synthetic import generate_image, write_synthetic_siim
from .synthetic_voc import generate_scene, synthetic_voc_class_names, write_synthetic_voc
from .transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transform, train_transform

__all__ = [
    "build_dataset", "synthetic_root", "write_synthetic_from_config", "WSSSDataset", "BadFileError", "wsss_collate",
    "as_is", "without_masks",
    "SIIMPneumothorax", "VOC2012", "GenericCSV", "stratified_split", "PAPER_SPLIT_COUNTS",
    "BalancedBatchSampler", "train_transform", "eval_transform", "denormalize",
    "IMAGENET_MEAN", "IMAGENET_STD", "write_synthetic_siim", "generate_image", "write_synthetic_voc",
    "generate_scene", "synthetic_voc_class_names",
    "read_dicom", "DicomReadError", "RLEError", "rle_encode", "rle_decode", "rle_decode_union",
    "rle_encode_regions",
]


def __getattr__(name: str) -> Any:  # VOC and generic loaders are imported on first use
    if name == "VOC2012":
        from .voc import VOC2012

        return VOC2012
    if name == "GenericCSV":
        from .generic import GenericCSV

        return GenericCSV
    raise AttributeError(f"module 'wsss_fast.data' has no attribute {name!r}")


def write_synthetic_from_config(cfg: dict, root: str | Path) -> Path:
    """Write (once) under ``root`` the synthetic set that ``dataset.synthetic`` describes
    (``num_images``, ``image_size``, ``positive_fraction``, ``seed``: null = the run's seed).

    ``dataset.name: synthetic_voc`` writes multi-class scenes in the VOC layout
    (``dataset.num_classes`` classes, split shares from ``dataset.split_counts``; every scene
    has an object, so ``positive_fraction`` is not used); any other name writes radiographs
    in the SIIM layout.

    Returns:
        ``root`` as a Path.
    """
    seed = get(cfg, "dataset.synthetic.seed")
    seed = int(get(cfg, "seed")) if seed is None else int(seed)
    if str(get(cfg, "dataset.name")).lower() == "synthetic_voc":
        write_synthetic_voc(Path(root), num_images=int(get(cfg, "dataset.synthetic.num_images")),
                            image_size=int(get(cfg, "dataset.synthetic.image_size")), seed=seed,
                            num_classes=int(get(cfg, "dataset.num_classes")),
                            split_counts=get(cfg, "dataset.split_counts"))
        return Path(root)
    write_synthetic_siim(Path(root), num_images=int(get(cfg, "dataset.synthetic.num_images")),
                         image_size=int(get(cfg, "dataset.synthetic.image_size")), seed=seed,
                         positive_fraction=float(get(cfg, "dataset.synthetic.positive_fraction")))
    return Path(root)


def synthetic_root(cfg: dict, paths: Any) -> Path:
    """Where the synthetic set lives: ``dataset.root`` if set, else ``<run>/data/synthetic``."""
    root = get(cfg, "dataset.root")
    return Path(root) if root else Path(paths.root) / "data" / "synthetic"


def _cache_args(cfg: dict, paths: Any, root: Path) -> dict:
    """``cache_dir`` / ``cache_size`` of the SIIM loader from ``dataset.cache`` (``auto``: DICOM
    sets only, under ``<run>/cache``; PNG files decode fast enough)."""
    from .cache import cache_folder

    setting = get(cfg, "dataset.cache")
    fmt = str(get(cfg, "dataset.image_format"))
    if str(setting).lower() == "auto" and (fmt == "png" or (fmt == "auto" and not (root / "dicom-images-train").is_dir())):
        return {}
    size = get(cfg, "dataset.image_size")
    folder = cache_folder(setting, None if paths is None else paths.root, "siim", root, size)
    return {} if folder is None else {"cache_dir": folder, "cache_size": size}


def build_dataset(cfg: dict, split: str | None, paths: Any, train: bool) -> WSSSDataset:
    """The configured data set for one split.

    Args:
        cfg: the run configuration (``dataset``, ``augment`` and ``seed`` are read).
        split: ``"train"``, ``"val"``, ``"test"`` (``"train_aug"`` for VOC), or None for all
            (VOC: ``"train"``).
        paths: the run's :class:`~wsss_fast.engine.paths.RunPaths` (SIIM splits go to ``paths.split``;
            the synthetic sets are written under ``paths.root/data/synthetic`` unless
            ``dataset.root`` is set).
        train: use the training transform (augmentation) instead of the eval transform.

    Returns:
        A :class:`WSSSDataset`.
    """
    name = str(get(cfg, "dataset.name")).lower()
    root = get(cfg, "dataset.root")
    transform = train_transform(cfg) if train else eval_transform(cfg)
    on_bad = get(cfg, "dataset.on_bad_file")
    seed = get(cfg, "dataset.split_seed")
    seed = int(get(cfg, "seed")) if seed is None else int(seed)
    if name in ("siim", "synthetic"):
        if name == "synthetic":
            root = write_synthetic_from_config(cfg, synthetic_root(cfg, paths))
        else:
            if not root:
                raise ValueError("dataset.root must name the SIIM folder (with dicom-images-train/ "
                                 "and train-rle.csv, or png-images/)")
            root = Path(root)
        return SIIMPneumothorax(root, split=split, transform=transform,
                                split_file=None if paths is None else paths.split,
                                split_counts=get(cfg, "dataset.split_counts"), seed=seed,
                                image_format=get(cfg, "dataset.image_format"),
                                csv_file=get(cfg, "dataset.csv"), on_bad_file=on_bad,
                                **_cache_args(cfg, paths, root))
    if name in ("voc", "synthetic_voc"):
        from .voc import VOC2012

        num_classes, names = int(get(cfg, "dataset.num_classes")), get(cfg, "dataset.class_names")
        if name == "synthetic_voc":
            root = write_synthetic_from_config(cfg, synthetic_root(cfg, paths))
            names = names or synthetic_voc_class_names(num_classes)
        elif not root:
            raise ValueError("dataset.root must name the folder holding VOCdevkit/VOC2012")
        return VOC2012(root, split=split or "train", transform=transform, cls_labels=get(cfg, "dataset.cls_labels"),
                       on_bad_file=on_bad, num_classes=num_classes, class_names=names)
    if name == "generic":
        from .generic import GenericCSV

        csv_path = get(cfg, "dataset.csv")
        if not csv_path:
            raise ValueError("dataset.csv must name the CSV of the generic data set")
        csv_path = Path(csv_path) if Path(csv_path).is_absolute() or not root else Path(root) / csv_path
        return GenericCSV(csv_path, split=split, transform=transform, class_names=get(cfg, "dataset.class_names"),
                          root=root, on_bad_file=on_bad)
    raise ValueError(f"unknown dataset.name {name!r}; expected siim | synthetic | voc | synthetic_voc | generic")
