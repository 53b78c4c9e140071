"""Class-balanced batch sampler: a constant negative:positive ratio in every batch.

Viniavskyi et al. (AIME 2020) train the segmentation network with class-balanced
sampling so that the many normal radiographs do not swamp the few positive ones. Each
batch holds ``round(batch_size / (1 + neg_pos_ratio))`` positives and the rest negatives;
positives and negatives are drawn without replacement from their own shuffled pools,
which are reshuffled and reused when exhausted (so the smaller class is oversampled).
Multi-label data (VOC: every image has a foreground class), a missing class, or
``neg_pos_ratio=None`` fall back to plain shuffled batches.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["BalancedBatchSampler", "GlobalBatchSampler"]


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches of indices with a fixed negative:positive ratio.

    Args:
        labels: [len] or [len, N] image-level labels; an image is positive when any class is.
        batch_size: images per batch.
        neg_pos_ratio: negatives per positive (1.0 = half and half); None = random batches.
        seed: base seed; the batches of epoch e depend on (seed, e) only.
        num_batches: batches per epoch; default ``len(labels) // batch_size`` (at least 1).
        rank, world_size: for DistributedDataParallel, rank r gets batches r, r + W, ...
            of the same global sequence (each rank sees ``num_batches // world_size``).

    Call :meth:`set_epoch` every epoch for new batches.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, neg_pos_ratio: float | None = 1.0,
                 seed: int = 0, num_batches: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        lab = np.asarray(labels)
        if lab.ndim == 1:
            lab = lab[:, None]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(lab) == 0:
            raise ValueError("labels is empty: nothing to sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self.rank, self.world_size = int(rank), int(world_size)
        self.n = len(lab)
        positive = (lab > 0.5).any(axis=1)
        self.pos = np.flatnonzero(positive)
        self.neg = np.flatnonzero(~positive)
        multilabel = lab.shape[1] > 1
        self.balanced = (neg_pos_ratio is not None and not multilabel and len(self.pos) > 0
                         and len(self.neg) > 0)
        if self.balanced:
            if neg_pos_ratio < 0:
                raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
            n_pos = int(round(batch_size / (1.0 + float(neg_pos_ratio))))
            self.n_pos = min(max(n_pos, 1), batch_size)
            self.n_neg = batch_size - self.n_pos
        else:
            self.n_pos, self.n_neg = 0, 0
        self.neg_pos_ratio = neg_pos_ratio
        total = num_batches if num_batches is not None else max(self.n // self.batch_size, 1)
        self.num_batches_total = int(total)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (batches differ between epochs, identical across ranks)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return max(self.num_batches_total // self.world_size, 1) if self.world_size > 1 else self.num_batches_total

    @staticmethod
    def _stream(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        out, have = [], 0
        while have < count:
            perm = rng.permutation(pool)
            out.append(perm)
            have += len(perm)
        return np.concatenate(out)[:count] if out else np.zeros(0, np.int64)

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 31337])
        nb = self.num_batches_total
        if not self.balanced:
            idx = self._stream(np.arange(self.n), nb * self.batch_size, rng)
            return [idx[b * self.batch_size:(b + 1) * self.batch_size].tolist() for b in range(nb)]
        pos = self._stream(self.pos, nb * self.n_pos, rng)
        neg = self._stream(self.neg, nb * self.n_neg, rng)
        batches = []
        for b in range(nb):
            batch = np.concatenate([pos[b * self.n_pos:(b + 1) * self.n_pos],
                                    neg[b * self.n_neg:(b + 1) * self.n_neg]])
            batches.append(rng.permutation(batch).tolist())
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        if self.world_size > 1:
            batches = batches[self.rank::self.world_size][: len(self)]
        yield from batches


class GlobalBatchSampler(Sampler[list[int]]):
    """Global batches of one epoch, deterministic in ``(seed, epoch)``, sliced for one rank.

    The training steps' sampler. With ``neg_pos_ratio`` set the global batches come from
    :class:`BalancedBatchSampler` (a constant negative:positive ratio per batch); otherwise from
    a seeded permutation. Every global batch is split over the ``world_size`` processes
    (``batch[rank::world_size]``), so each rank gets the same number of batches (as a
    ``DistributedSampler`` does) and the class balance holds over the global batch.

    Args:
        labels: [len] or [len, N] image-level labels.
        batch_size: the global batch size.
        neg_pos_ratio: negatives per positive, or None for plain shuffling.
        seed: base seed; epoch ``e`` draws with ``seed + seed_stride * e``.
        rank, world_size: this process and the number of processes.
        seed_stride: see ``seed``.
        min_batch: shorter global batches (a permutation's last one) are dropped; default
            ``batch_size``.

    Call :meth:`set_epoch` every epoch.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, neg_pos_ratio: float | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, seed_stride: int = 1, min_batch: int | None = None) -> None:
        self.labels = np.asarray(labels, dtype=np.float32).reshape(len(labels), -1)
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        if len(self.labels) == 0:
            raise ValueError("labels is empty: nothing to sample")
        self.batch_size, self.neg_pos_ratio, self.seed = int(batch_size), neg_pos_ratio, int(seed)
        self.rank, self.world_size, self.seed_stride = int(rank), int(world_size), int(seed_stride)
        self.min_batch = self.batch_size if min_batch is None else int(min_batch)
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_batches(self) -> list[list[int]]:
        """The epoch's global batches (before slicing for this rank)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        seed = self.seed + self.seed_stride * self.epoch
        if self.neg_pos_ratio is not None:
            sampler = BalancedBatchSampler(self.labels, self.batch_size, float(self.neg_pos_ratio), seed)
            sampler.set_epoch(self.epoch)
            batches = [list(map(int, b)) for b in sampler]
        else:
            perm = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed)).tolist()
            batches = [perm[i:i + self.batch_size] for i in range(0, len(perm), self.batch_size)]
        batches = [b for b in batches if len(b) >= self.min_batch]
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield batch[self.rank::self.world_size]

    def __len__(self) -> int:
        return len(self.global_batches())
