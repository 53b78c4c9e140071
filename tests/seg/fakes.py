"""A tiny in-memory dataset with the ``wsss_fast.data`` interface, for step-3 and report tests."""

from __future__ import annotations

import numpy as np


class FakeDataset:
    """Gray images with a bright rectangle (the 'lesion') on positive images.

    Original sizes vary per image (odd sizes on purpose).
    """

    def __init__(self, n: int = 8, num_classes: int = 1, seed: int = 0, prefix: str = "img"):
        rng = np.random.default_rng(seed)
        self.num_classes = num_classes
        self.class_names = [f"c{c}" for c in range(num_classes)]
        self.image_ids = [f"{prefix}{i:03d}" for i in range(n)]
        self.sizes = [(int(rng.integers(36, 52)), int(rng.integers(30, 46))) for _ in range(n)]
        self.labels = np.zeros((n, num_classes), np.float32)
        self.masks = []
        for i, (h, w) in enumerate(self.sizes):
            m = np.zeros((h, w), np.uint8)
            if i % 2 == 0:
                c = i // 2 % num_classes
                self.labels[i, c] = 1
                m[h // 4: h // 2, w // 4: 3 * w // 4] = c + 1
            self.masks.append(m)

    def __len__(self):
        return len(self.image_ids)

    def load_image(self, i):
        m = self.masks[i]
        img = np.full(m.shape, 60, np.uint8)
        img[m > 0] = 200
        return np.stack([img] * 3, -1)

    def load_mask(self, i):
        return self.masks[i]


def fake_builder(datasets: dict):
    """A ``build_dataset(cfg, split, paths, train)`` returning the given datasets by split."""

    def build_dataset(cfg, split, paths, train=False):
        return datasets[split]

    return build_dataset
