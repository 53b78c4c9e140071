"""The built-in synthetic radiographs: determinism, masks, and the features they promise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from wsss_fast.data.synthetic import (_ellipse_r, _geometry, _grid, generate_image, generate_mask,
                                      synthetic_labels, write_synthetic_siim)
from wsss_fast.data.synthetic_lesions import Piece, draw_pieces, sample_lesion
from wsss_fast.metrics.lesions import lesion_stats, mask_stats


def test_deterministic_by_seed():
    a_img, a_m = generate_image(3, 64, seed=5, positive=True)
    b_img, b_m = generate_image(3, 64, seed=5, positive=True)
    c_img, _ = generate_image(3, 64, seed=6, positive=True)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_m, b_m)
    assert not np.array_equal(a_img, c_img)
    np.testing.assert_array_equal(synthetic_labels(30, 1, 0.4), synthetic_labels(30, 1, 0.4))
    assert synthetic_labels(30, 1, 0.4).sum() == 12


def test_positives_have_masks_negatives_none():
    labels = synthetic_labels(10, 0, 0.5)
    for i in range(10):
        img, m = generate_image(i, 64, 0, bool(labels[i]))
        assert img.dtype == np.uint8 and img.shape == (64, 64) and m.shape == (64, 64)
        if labels[i]:
            assert 0 < m.sum() < 0.25 * m.size
        else:
            assert m.sum() == 0


def test_pneumothorax_is_darker_and_without_markings():
    # the lesion is darker than the same lung without it (same anatomy), and its interior
    # (> 3 px from its edges, where no pleural line or lung edge lies) has less fine texture
    darker, smoother, tested = 0, 0, 0
    for i in range(12):
        img, m = generate_image(i, 256, 0, positive=True)
        img_neg, _ = generate_image(i, 256, 0, positive=False)
        ptx = m.astype(bool)
        darker += img[ptx].mean() < img_neg[ptx].mean()
        inner = ndimage.distance_transform_edt(ptx) > 3
        if inner.sum() < 20:
            continue
        tested += 1

        def texture(a):
            a = a.astype(float)
            return np.abs(a - ndimage.uniform_filter(a, 3))[inner].mean()
        smoother += texture(img) < texture(img_neg)
    assert darker == 12 and tested >= 6 and smoother >= tested - 1


def test_write_is_idempotent(tmp_path):
    write_synthetic_siim(tmp_path, 4, 48, 0, 0.5, progress=False)
    csv_file = tmp_path / "train-rle.csv"
    stamp = csv_file.stat().st_mtime_ns
    write_synthetic_siim(tmp_path, 4, 48, 0, 0.5, progress=False)
    assert csv_file.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("size,n", [(128, 200), (256, 150)])
def test_lesion_sizes_follow_siim(size, n):
    """Area, thickness and region count of the lesions in bands around those measured on the
    SIIM-ACR train masks (area p10 / median / p90 0.2 / 0.8 / 3.1 %, thickness 1.9 / 4.3 / 11 %
    of the width, 36 % with two or more regions), at the demo's 128 px too; none vanishes."""
    stats = lesion_stats(generate_mask(i, size, seed=0) for i in range(n))
    area, thick = stats["area_pct"], stats["thickness_pct"]
    assert stats["n_empty"] == 0 and stats["n"] == n
    assert 0.001 <= area["p10"] <= 0.0035, area
    assert 0.005 <= area["p50"] <= 0.012, area
    assert 0.02 <= area["p90"] <= 0.045, area
    assert 0.012 <= thick["p10"] <= 0.03, thick
    assert 0.03 <= thick["p50"] <= 0.06, thick
    assert 0.07 <= thick["p90"] <= 0.15, thick
    assert 0.25 <= stats["multi_region"] <= 0.47, stats["multi_region"]
    assert stats["regions"].max() <= 4


def test_generate_mask_is_the_image_mask():
    for size in (64, 128):
        for i in range(4):
            np.testing.assert_array_equal(generate_mask(i, size, seed=2), generate_image(i, size, 2, positive=True)[1])


def test_lesion_leaves_the_anatomy_alone():
    # the lesion has its own random stream: away from it, image i with and without it is the same
    for i in range(4):
        img, m = generate_image(i, 128, 1, positive=True)
        img_neg, _ = generate_image(i, 128, 1, positive=False)
        far = ndimage.distance_transform_edt(m == 0) > 6
        assert np.abs(img[far].astype(int) - img_neg[far]).max() <= 1
        assert (img[m > 0] != img_neg[m > 0]).mean() > 0.5


def test_visceral_pleural_line_borders_the_lesion_on_the_lung_side():
    # a thin band just inside the lung, along the lesion's inner edge, is brighter than in the
    # same image without the lesion, while the lesion itself is darker
    brighter = 0
    for i in range(10):
        img, m = generate_image(i, 128, 0, positive=True)
        img_neg, _ = generate_image(i, 128, 0, positive=False)
        u, v = _grid(128)
        geo = _geometry(np.random.default_rng([0, i, 104729]))
        lungs = np.zeros_like(m, dtype=bool)
        for _, cx, cy, rx, ry in geo["lungs"]:
            lungs |= _ellipse_r(u, v, cx, cy, rx, ry) < 0.97
        ring = ndimage.binary_dilation(m.astype(bool), iterations=2) & ~m.astype(bool) & lungs
        diff = img.astype(float) - img_neg
        brighter += diff[ring].mean() > 4 and diff[m.astype(bool)].mean() < 0
    assert brighter == 10


def _lung(i: int, size: int):
    """(u, v, (cx, cy, rx, ry), inside) of image i's right-hand lung."""
    u, v = _grid(size)
    _, cx, cy, rx, ry = _geometry(np.random.default_rng([0, i, 104729]))["lungs"][1]
    return u, v, (cx, cy, rx, ry), _ellipse_r(u, v, cx, cy, rx, ry) < 1.0


def test_every_piece_is_one_region_and_never_vanishes():
    for i in range(40):
        pieces = sample_lesion(np.random.default_rng(i))
        u, v, lung, inside = _lung(i, 128)
        for p in pieces:  # drawn in the right-hand lung (a left-hand one mirrored)
            theta0 = p.theta0 if p.side > 0 else np.pi - p.theta0
            m, _ = draw_pieces([Piece(1, theta0, p.length, p.thickness)], u, v, lung, inside)
            assert mask_stats(m)[1] == 1, (i, p)
            assert not (m & ~inside).any()
    # a band far thinner than a pixel still marks the lung pixel nearest to its centre
    u, v, lung, inside = _lung(0, 64)
    m, pleura = draw_pieces([Piece(1, 0.0, 0.1, 0.001)], u, v, lung, inside)
    assert m.sum() == 1 and inside[m].all() and np.argwhere(m)[0][1] > 32
