"""Pseudo labels from soft maps: labels_from_soft and best_and_label (the threshold sweeps' input)
against the definition, an argmax over [bg_thres, maps...] with ties to background."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_fast.irn.sem_seg import best_and_label, labels_from_soft


def _by_definition(rw: torch.Tensor, keys: np.ndarray, t: float, size) -> np.ndarray:
    rw = F.interpolate(rw[None], size=size, mode="bilinear", align_corners=False)[0] if rw.shape[0] else \
        rw.new_zeros((0, *size))
    padded = torch.cat([torch.full((1, *size), float(t)), rw])
    lut = np.concatenate([[0], np.asarray(keys) + 1])
    return lut[torch.argmax(padded, 0).numpy()].astype(np.uint8)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_labels_and_best_follow_the_definition(device, k):
    g = torch.Generator().manual_seed(k)
    rw = (torch.rand(k, 9, 11, generator=g) * 8).round() / 8  # many ties, and values equal to thresholds
    keys = np.array([4, 0, 2][:k], np.int64)
    size = (17, 23)
    best, label = best_and_label(rw.to(device), keys, size)
    assert best.device.type == label.device.type == torch.device(device).type
    assert best.shape == label.shape == size and label.dtype == torch.long
    for t in (0.0, 0.25, 0.5, 0.9):
        want = _by_definition(rw, keys, t, size)
        got = torch.where(best.cpu() > t, label.cpu(), 0).numpy()
        if device == "cpu":  # the same interpolation: the same labels
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(labels_from_soft(rw, keys, t, size), want)
        else:
            assert (got == want).mean() > 0.99
