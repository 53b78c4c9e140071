"""Lesion size statistics on hand-made masks whose area, regions and thickness are known."""

from __future__ import annotations

import numpy as np
import pytest

from wsss_fast.metrics.lesions import format_lesion_stats, lesion_stats, mask_stats


def _square(h: int, w: int, y: int, x: int, k: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y:y + k, x:x + k] = 1
    return m


def test_square_area_regions_thickness():
    # a 5 x 5 square: the centre pixel is 3 px from the nearest background pixel -> disc diameter 6
    area, regions, thick = mask_stats(_square(100, 100, 40, 40, 5))
    assert area == 25 / 10000 and regions == 1 and thick == 6.0
    # a 4 x 4 square: the inner 2 x 2 pixels are 2 px from background
    assert mask_stats(_square(100, 100, 10, 10, 4)) == (16 / 10000, 1, 4.0)
    # one pixel: distance 1
    assert mask_stats(_square(20, 20, 3, 3, 1)) == (1 / 400, 1, 2.0)
    assert mask_stats(np.zeros((8, 8))) == (0.0, 0, 0.0)


def test_outside_the_image_is_background():
    # a 5 x 5 square in the corner is as thick as one in the middle (not 10: the image edge
    # is a lesion edge)
    assert mask_stats(_square(50, 50, 0, 0, 5))[2] == 6.0
    assert mask_stats(np.ones((3, 3)))[2] == 4.0


def test_regions_are_8_connected():
    m = _square(30, 30, 5, 5, 3) | _square(30, 30, 8, 8, 3)   # touching at one corner only
    assert mask_stats(m)[1] == 1
    m = _square(30, 30, 5, 5, 3) | _square(30, 30, 5, 9, 3)   # one background column between them
    assert mask_stats(m)[1] == 2
    # thickness is the thickest region's; area all regions together
    m = _square(40, 40, 2, 2, 3) | _square(40, 40, 20, 20, 7)
    assert mask_stats(m) == ((9 + 49) / 1600, 2, 8.0)


def test_thickness_of_a_disc_and_fraction_of_the_width():
    yy, xx = np.mgrid[0:60, 0:200]
    disc = (yy - 30) ** 2 + (xx - 100) ** 2 <= 15 ** 2
    stats = lesion_stats([disc])
    assert 30.0 <= stats["thickness_px"][0] <= 32.0          # diameter 31 px
    assert stats["thickness"][0] == pytest.approx(stats["thickness_px"][0] / 200)   # width, not height
    assert stats["area"][0] == pytest.approx(disc.sum() / (60 * 200))


def test_summary_percentiles_and_multi_region_share():
    # squares of side 1..10 in 100 x 100 images; the last three get a second one-pixel region
    masks = []
    for k in range(1, 11):
        m = _square(100, 100, 10, 10, k)
        if k >= 8:
            m[90, 90] = 1
        masks.append(m)
    masks += [np.zeros((100, 100), np.uint8)] * 4     # negatives: counted apart
    stats = lesion_stats(masks)
    assert stats["n"] == 10 and stats["n_empty"] == 4
    areas = np.array([k * k + (k >= 8) for k in range(1, 11)]) / 1e4
    np.testing.assert_allclose(stats["area"], areas)
    np.testing.assert_array_equal(stats["regions"], [1] * 7 + [2] * 3)
    assert stats["multi_region"] == pytest.approx(0.3)
    assert stats["area_pct"]["p50"] == pytest.approx(np.median(areas))
    assert stats["area_pct"]["p10"] == pytest.approx(np.percentile(areas, 10))
    # thickness 2 * ceil(k / 2) ... : 2, 2, 4, 4, 6, 6, 8, 8, 10, 10 px
    np.testing.assert_allclose(stats["thickness_px"], [2, 2, 4, 4, 6, 6, 8, 8, 10, 10])
    assert stats["thickness_pct"]["p90"] == pytest.approx(np.percentile(stats["thickness"], 90))
    text = format_lesion_stats(stats)
    assert "median 0.30" in text and "30.0 %" in text     # median area 30.5 px of 1e4


def test_empty_set_and_bad_input():
    stats = lesion_stats([np.zeros((4, 4))])
    assert stats["n"] == 0 and stats["n_empty"] == 1 and np.isnan(stats["multi_region"])
    assert np.isnan(stats["area_pct"]["p50"])
    with pytest.raises(ValueError, match="2-D"):
        mask_stats(np.zeros((2, 4, 4)))
