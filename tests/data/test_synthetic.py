"""The built-in synthetic radiographs: determinism, masks, and the features they promise."""

from __future__ import annotations

import numpy as np

from wsss_fast.data.synthetic import generate_image, synthetic_labels, write_synthetic_siim


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
            assert 10 < m.sum() < 0.25 * m.size
        else:
            assert m.sum() == 0


def test_pneumothorax_is_darker_and_without_markings():
    # the crescent is darker than the rest of the lung and has less fine texture
    darker, smoother = 0, 0
    for i in range(6):
        img, m = generate_image(i, 128, 0, positive=True)
        _, m_neg_ref = generate_image(i, 128, 0, positive=False)
        img_neg, _ = generate_image(i, 128, 0, positive=False)
        ptx = m.astype(bool)
        # same anatomy without the pneumothorax: the region was brighter and more textured
        darker += img[ptx].mean() < img_neg[ptx].mean()
        lap = np.abs(np.diff(img.astype(float), axis=1))[:, :-1][ptx[:, 1:-1]].mean()
        lap_neg = np.abs(np.diff(img_neg.astype(float), axis=1))[:, :-1][ptx[:, 1:-1]].mean()
        smoother += lap < lap_neg
    assert darker >= 5 and smoother >= 4


def test_write_is_idempotent(tmp_path):
    write_synthetic_siim(tmp_path, 4, 48, 0, 0.5, progress=False)
    csv_file = tmp_path / "train-rle.csv"
    stamp = csv_file.stat().st_mtime_ns
    write_synthetic_siim(tmp_path, 4, 48, 0, 0.5, progress=False)
    assert csv_file.stat().st_mtime_ns == stamp
