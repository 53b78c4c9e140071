"""wsss_fast.irn.walk: pseudo labels from soft maps (labels_from_soft and best_and_label, the
threshold sweeps' input) against the definition, an argmax over [bg_thres, maps...] with ties to
background; the walk for several step counts as one walk continued."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_fast.irn.walk import labels_from_soft
from wsss_fast.metrics import best_and_label


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


def test_the_walk_for_several_step_counts_continues_one_walk(monkeypatch):
    """make-sem-seg's choice on val walks the candidates' step counts as one walk continued
    (the walk is linear): each count's maps equal a walk of that count alone (CPU: the same bits),
    with and without the edge mask."""
    import wsss_fast.irn.walk as walk
    from wsss_fast.config import load_config

    g = torch.Generator().manual_seed(0)
    edge = torch.rand(2, 8, 10, generator=g) ** 3
    monkeypatch.setattr(walk, "_edges", lambda model, x, scales: edge)
    items = [{"image": torch.zeros(3, 32, 40), "size": (32, 40), "id": f"i{b}",
              "cam": torch.rand(k, 8, 10, generator=g)} for b, k in enumerate((2, 1))]
    cfg = load_config(None, {"sem_seg": {"radius": 3}})
    masks = (True, False)
    together = walk._walk_soft(None, items, cfg, torch.device("cpu"), [8, 0, 3, 1], masks)
    for m in masks:
        for n in (0, 1, 3, 8):
            alone = walk._walk_soft(None, items, cfg, torch.device("cpu"), [n], (m,))[(m, n)]
            for a, b in zip(together[(m, n)], alone):
                assert torch.equal(a, b), (m, n)
    assert not torch.equal(together[(True, 8)][0], together[(True, 0)][0])  # the walk moved the maps
