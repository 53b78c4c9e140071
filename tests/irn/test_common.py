"""The IRNet step's small helpers: resizing images and label maps, list-valued config keys."""

from __future__ import annotations

import numpy as np

from wsss_fast.irn.common import as_list, resize_image_uint8, resize_label


def test_resize_label_is_nearest_and_takes_height_first():
    label = np.array([[0, 1, 255], [2, 0, 1]], np.uint8)  # 2 x 3
    out = resize_label(label, (4, 6))
    np.testing.assert_array_equal(out, np.repeat(np.repeat(label, 2, axis=0), 2, axis=1))
    assert resize_label(label, (2, 3)) is label


def test_resize_image_takes_height_first_and_keeps_channels():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert resize_image_uint8(img, (4, 6)).shape == (4, 6, 3)
    assert resize_image_uint8(img[..., :1], (4, 6)).shape == (4, 6, 1)
    assert resize_image_uint8(img, (2, 3)) is img


def test_as_list():
    assert as_list(None) == [] and as_list("a") == ["a"] and as_list(("a", "b")) == ["a", "b"]
