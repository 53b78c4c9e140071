"""What :class:`wsss_fast.cam.CAMExtractor` returns, and the maps saved per image.

The per-image dicts follow the CAM files of Ahn et al., "Weakly Supervised Learning of
Instance Segmentation with Inter-pixel Relations" (IRNet), CVPR 2019: ``keys`` (the classes),
``cam`` at stride 4 and ``high_res`` at input size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..engine.transfer import HostCopy

__all__ = ["CAMResult", "HostImages", "LayerCAMs", "PER_IMAGE_FIELDS", "no_maps", "empty_result", "strided_size"]

PER_IMAGE_FIELDS = ("keys", "cam", "high_res", "raw", "raw_high_res")


@dataclass
class CAMResult:
    """Maps of the P positive (image, class) pairs of a batch, image-major, classes ascending.

    Attributes:
        cams: ``[P, ceil(H/4), ceil(W/4)]`` float32 maps normalized by their max (IRNet "cam").
        high_res: ``[P, H, W]`` float32 maps at input size, normalized by their max.
        raw: ``[P, ceil(H/4), ceil(W/4)]`` the same maps before normalization (sum over scales
            and flips of ``relu(sum_k w_k A_k)``).
        raw_high_res: ``[P, H, W]`` unnormalized maps at input size.
        keys: ``[P]`` int64 class index of every pair (IRNet's ``keys``/``valid_cat``).
        image_index: ``[P]`` int64 image of every pair within the batch.
        labels: ``[B, N]`` bool, the positive classes used (given or predicted).
        logits: ``[B, N]`` scores of the un-flipped batch at the scale closest to 1.
    """

    cams: Tensor
    high_res: Tensor
    raw: Tensor
    raw_high_res: Tensor
    keys: Tensor
    image_index: Tensor
    labels: Tensor
    logits: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_pairs(self) -> int:
        return int(self.keys.shape[0])

    def counts(self) -> list[int]:
        """Number of maps of every image of the batch."""
        return torch.bincount(self.image_index.cpu(), minlength=self.batch_size).tolist()

    def per_image(self, dtype: torch.dtype | None = torch.float16, numpy: bool = False,
                  fields: Sequence[str] = PER_IMAGE_FIELDS) -> list[dict]:
        """Split into one IRNet-style dict per image (the saving format; fp16 by default).

        With ``numpy``, the maps of each dtype are copied to the host once for the whole batch
        (:meth:`to_host`), then split; a returned map may be a view of that batch tensor or array.

        Args:
            dtype: dtype of the maps (``None`` keeps float32).
            numpy: return numpy arrays on the host instead of tensors.
            fields: which of ``keys``, ``cam``, ``high_res``, ``raw``, ``raw_high_res`` to return.

        Returns:
            ``B`` dicts with (of ``fields``) ``keys [n_i]``, ``cam [n_i, h4, w4]``, ``high_res
            [n_i, H, W]``, ``raw [n_i, h4, w4]`` and ``raw_high_res [n_i, H, W]``; ``n_i`` may be 0.
        """
        if numpy:
            return self.to_host(dtype, fields).wait()
        parts = {name: torch.split(t, self.counts()) for name, t in self._fields(dtype, fields).items()}
        return [{name: parts[name][i] for name in fields} for i in range(self.batch_size)]

    def to_host(self, dtype: torch.dtype | None = torch.float16,
                fields: Sequence[str] = PER_IMAGE_FIELDS) -> "HostImages":
        """:meth:`per_image` with ``numpy``, in two halves: the copies to the host are queued now
        (:class:`~wsss_fast.engine.transfer.HostCopy`), :meth:`HostImages.wait` waits and splits."""
        return HostImages(HostCopy([self.image_index, *self._fields(dtype, fields).values()]), tuple(fields),
                          self.batch_size)

    def _fields(self, dtype: torch.dtype | None, fields: Sequence[str]) -> dict[str, Tensor]:
        src = {"keys": self.keys, "cam": self.cams, "high_res": self.high_res, "raw": self.raw,
               "raw_high_res": self.raw_high_res}
        bad = [f for f in fields if f not in src]
        if bad:
            raise ValueError(f"CAMResult.per_image: unknown fields {bad}; choose from {PER_IMAGE_FIELDS}")
        return {name: src[name].to(dtype) if name != "keys" and dtype is not None else src[name] for name in fields}

    def dense(self, which: str = "cams") -> Tensor:
        """Scatter one field into ``[B, N, h, w]``, zero for negative classes."""
        src = {"cams": self.cams, "high_res": self.high_res, "raw": self.raw,
               "raw_high_res": self.raw_high_res}.get(which)
        if src is None:
            raise ValueError(f"CAMResult.dense: which must be cams|high_res|raw|raw_high_res, got {which!r}")
        out = src.new_zeros((self.batch_size, self.labels.shape[1], *src.shape[1:]))
        out[self.image_index, self.keys] = src
        return out


class HostImages:
    """A batch's per-image dicts on their way to the host (:meth:`CAMResult.to_host`)."""

    def __init__(self, copy: HostCopy, fields: tuple[str, ...], batch_size: int) -> None:
        self._copy, self._fields, self._batch_size = copy, fields, batch_size

    def wait(self) -> list[dict]:
        """``B`` dicts of numpy arrays, as :meth:`CAMResult.per_image` with ``numpy``."""
        index, *maps = self._copy.wait()
        sizes = torch.bincount(index, minlength=self._batch_size).tolist()
        parts = {name: [p.numpy() for p in torch.split(t, sizes)] for name, t in zip(self._fields, maps)}
        return [{name: parts[name][i] for name in self._fields} for i in range(self._batch_size)]


@dataclass
class LayerCAMs:
    """Single-scale maps at the target layer's resolution (padded ``[B, C]`` pair layout).

    Attributes:
        maps: ``[B, C, h, w]`` unnormalized ``relu(sum_k w_k A_k)``; zero where not ``valid``.
        weights: ``[B, C, K]`` channel weights.
        classes: ``[B, C]`` int64 class of every slot (0 in padded slots).
        valid: ``[B, C]`` bool, which slots are real pairs; ``C`` is the largest count.
        logits: ``[B, N]`` model scores.
    """

    maps: Tensor
    weights: Tensor
    classes: Tensor
    valid: Tensor
    logits: Tensor


def strided_size(size: tuple[int, int]) -> tuple[int, int]:
    """``(ceil(H/4), ceil(W/4))``: the size of the stride-4 maps (``cams``, ``raw``) of an ``(H, W)`` input."""
    return math.ceil(size[0] / 4), math.ceil(size[1] / 4)


def empty_result(pos: Tensor, logits: Tensor, size: tuple[int, int]) -> CAMResult:
    """A result without pairs for a batch with labels ``pos [B, N]`` and scores ``logits``."""
    z, strided = logits.new_zeros, strided_size(size)
    e = torch.zeros(0, dtype=torch.long, device=pos.device)
    return CAMResult(z((0, *strided)).float(), z((0, *size)).float(), z((0, *strided)).float(),
                     z((0, *size)).float(), e, e.clone(), pos, logits)


def no_maps(size: tuple[int, int], fields: Sequence[str] = PER_IMAGE_FIELDS) -> dict:
    """What a call gives an image without classes, as one :meth:`CAMResult.per_image` dict
    (fp16 numpy maps): empty ``keys`` ``[0]``, ``cam`` / ``raw`` ``[0, ceil(H/4), ceil(W/4)]``,
    ``high_res`` / ``raw_high_res`` ``[0, H, W]`` for ``size = (H, W)``; no network runs."""
    z = torch.zeros((1, 0))
    return empty_result(z.bool(), z, tuple(size)).per_image(numpy=True, fields=fields)[0]
