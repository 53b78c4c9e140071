"""The SIIM run-length code against the competition's own encoder/decoder convention."""

from __future__ import annotations

import numpy as np
import pytest

from wsss_fast.data.rle import (RLEError, is_empty_rle, parse_rle, rle_decode, rle_decode_union, rle_encode,
                                rle_encode_regions)


def competition_mask2rle(img, width, height):
    """The competition's ``mask_functions.mask2rle``, verbatim in logic (called with mask.T * 255)."""
    rle = []
    last_color = 0
    current_pixel = 0
    run_start = -1
    run_length = 0
    for x in range(width):
        for y in range(height):
            current_color = img[x][y]
            if current_color != last_color:
                if current_color == 255:
                    run_start = current_pixel
                    run_length = 1
                else:
                    rle.append(str(run_start))
                    rle.append(str(run_length))
                    run_start = -1
                    run_length = 0
                    current_pixel = 0
            elif run_start > -1:
                run_length += 1
            last_color = current_color
            current_pixel += 1
    return " ".join(rle)


def competition_rle2mask(rle, width, height):
    """The competition's ``mask_functions.rle2mask`` (callers transpose the result)."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    starts, lengths = array[0::2], array[1::2]
    current_position = 0
    for index, start in enumerate(starts):
        current_position += start
        mask[current_position:current_position + lengths[index]] = 255
        current_position += lengths[index]
    return mask.reshape(width, height)


def test_hand_example_column_major():
    # H=3, W=2; column-major flattening: [m00, m10, m20, m01, m11, m21]
    m = np.array([[0, 0], [1, 0], [1, 1]], np.uint8)  # flat: 0 1 1 0 0 1
    assert rle_encode(m) == "1 2 2 1"  # run at 1 (len 2), next 2 pixels after its end (len 1)
    np.testing.assert_array_equal(rle_decode("1 2 2 1", 3, 2), m)
    assert rle_encode(np.zeros((3, 2))) == "-1"
    assert rle_decode("-1", 3, 2).sum() == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_competition_encoder_and_decoder(seed):
    rng = np.random.default_rng(seed)
    h, w = 13, 9  # non-square catches transposition errors
    m = (rng.random((h, w)) < 0.35).astype(np.uint8)
    m[-1, -1] = 0  # the competition encoder does not close a run at the very last pixel
    code = rle_encode(m)
    assert code == competition_mask2rle(m.T * 255, w, h)
    np.testing.assert_array_equal(rle_decode(code, h, w), m)
    np.testing.assert_array_equal(competition_rle2mask(code, w, h).T / 255, m)


def test_multi_region_rows_union():
    m = np.zeros((20, 30), np.uint8)
    m[2:6, 3:8] = 1
    m[10:15, 20:28] = 1
    codes = rle_encode_regions(m)
    assert len(codes) == 2
    for c in codes:
        assert 0 < rle_decode(c, 20, 30).sum() < m.sum()
    np.testing.assert_array_equal(rle_decode_union(codes, 20, 30), m)
    # overlapping rows (as some competition images have) are a union, not a sum
    a = np.zeros((8, 8), np.uint8)
    a[1:5, 1:5] = 1
    b = np.zeros((8, 8), np.uint8)
    b[3:7, 3:7] = 1
    u = rle_decode_union([rle_encode(a), "-1", rle_encode(b)], 8, 8)
    np.testing.assert_array_equal(u, a | b)
    assert rle_encode_regions(np.zeros((4, 4))) == ["-1"]


@pytest.mark.parametrize("code,match", [("1 2 3", "odd"), ("1 x", "non-integer"), ("-2 3", "negative"),
                                        ("1 0", "non-positive")])
def test_malformed(code, match):
    with pytest.raises(RLEError, match=match):
        parse_rle(code)


def test_run_past_image_end():
    with pytest.raises(RLEError, match="past the image"):
        rle_decode("10 7", 4, 4)
    assert rle_decode("10 6", 4, 4).sum() == 6


def test_empty_markers():
    """The competition's -1, an empty cell, and a cell a spreadsheet or pandas turned into NaN."""
    for code in ("-1", " -1 ", "", None, "nan", "NaN", float("nan")):
        assert is_empty_rle(code), code
        assert rle_decode(code, 3, 2).sum() == 0
    assert not is_empty_rle("0 1")


def test_regions_are_8_connected_in_column_major_order():
    m = np.zeros((6, 6), np.uint8)
    m[0, 4:6] = 1  # first in row-major order, but its first column-major pixel is in column 4
    m[3:5, 0] = 1  # first column-major pixel (3, 0)
    m[5, 1] = 1    # touches the region above only at a corner
    second = np.zeros_like(m)
    second[0, 4:6] = 1
    codes = rle_encode_regions(m)
    assert len(codes) == 2
    np.testing.assert_array_equal(rle_decode(codes[0], 6, 6), m & ~second)
    np.testing.assert_array_equal(rle_decode(codes[1], 6, 6), second)
    assert len(rle_encode_regions(m, connectivity=1)) == 3
