"""Loading of pretrained backbone weights from a local torchvision state dict.

Library code never downloads: the user saves, once, the state dict of
a torchvision model (``torch.save(torchvision.models.resnet50(weights="DEFAULT").state_dict(),
"resnet50.pth")``, or the ``.pth`` file torchvision caches) and points
``cls.pretrained_path`` (or ``irn.pretrained_path``) at it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` (tensors only, on the CPU).

    Accepts a bare state dict or one wrapped under ``state_dict``/``model`` (as many
    training scripts save it) and strips a DistributedDataParallel ``module.`` prefix.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file does not hold a state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file not found: '{path}'. Save a torchvision state dict there "
            "(no weights are downloaded), or set the *.pretrained_path key to null for random init."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files ...
        raise ValueError(f"could not read weights file '{path}': {exc}") from exc
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"'{path}' does not hold a state dict of tensors (got {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _fmt(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def load_torchvision_weights(model: nn.Module, path: str | Path,
                             ignore_prefixes: Iterable[str] = ("fc.", "classifier."),
                             name: str | None = None) -> None:
    """Load a torchvision state dict into ``model`` (a torchvision model), strictly.

    Keys starting with one of ``ignore_prefixes`` (the ImageNet classification head) are
    skipped on both sides. ``num_batches_tracked`` buffers, absent from old torchvision
    files, are optional.

    Args:
        model: the torchvision model the file was saved from (e.g. ``torchvision.models.resnet50()``).
        path: the local ``.pth`` file.
        ignore_prefixes: key prefixes not loaded.
        name: the architecture's name for error messages (default: the model's class name).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: missing, unexpected or wrongly shaped keys; the message lists them and
            names the file.
    """
    ignore = tuple(ignore_prefixes)
    given = {k: v for k, v in read_state_dict(path).items() if not k.startswith(ignore)}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore)}
    missing = sorted(k for k in expected if k not in given and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in given if k not in expected)
    shapes = sorted(f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in given if k in expected and given[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        parts = [f"weights file '{path}' does not match {name or type(model).__name__}:"]
        if missing:
            parts.append(f"{len(missing)} missing keys [{_fmt(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys [{_fmt(unexpected)}]")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches [{_fmt(shapes)}]")
        parts.append("(is it the state dict of the configured architecture?)")
        raise ValueError(" ".join(parts))
    model.load_state_dict(given, strict=False)
