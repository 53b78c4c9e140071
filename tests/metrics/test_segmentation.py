"""Metrics against hand-computed confusion matrices (Viniavskyi et al., AIME 2020, appendix)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss_fast.metrics import SegEvaluator, confusion_matrix, dice_per_image, miou, multilabel_f1


def test_confusion_matrix_by_hand():
    gt = np.array([[0, 0, 1], [1, 1, 255]])
    pred = np.array([[0, 1, 1], [0, 1, 1]])
    # rows = gt, cols = pred; the 255 pixel is skipped
    expected = np.array([[1, 1], [1, 2]])
    np.testing.assert_array_equal(confusion_matrix(pred, gt, 2), expected)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), 2), expected)
    # without ignore the 255 pixel is an error
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(pred, gt, 2, ignore_index=None)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(pred[:, :2], gt, 2)


def test_miou_by_hand():
    conf = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 0]])
    mean, per = miou(conf)
    # bg: 5/(5+2+1) ; c1: 3/(3+1+3) ; c2: never true, predicted once -> 0/(0+1+0)
    assert per[0] == pytest.approx(5 / 8) and per[1] == pytest.approx(3 / 7) and per[2] == 0.0
    assert mean == pytest.approx((5 / 8 + 3 / 7 + 0.0) / 3)
    # a class absent from both truth and prediction is NaN and left out of the mean
    mean, per = miou(np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]]))
    assert math.isnan(per[2]) and mean == pytest.approx((5 / 8 + 3 / 6) / 2)


def test_dice_conventions():
    z = np.zeros((4, 4), np.uint8)
    assert dice_per_image(z, z) == 1.0  # both empty
    a = z.copy()
    a[0, :2] = 1
    assert dice_per_image(a, z) == 0.0 and dice_per_image(z, a) == 0.0
    b = z.copy()
    b[0, 1:4] = 1
    assert dice_per_image(a, b) == pytest.approx(2 * 1 / (2 + 3))
    ign = b.copy()
    ign[0, 3] = 255  # ignored pixel is neither fg nor counted
    assert dice_per_image(a, ign) == pytest.approx(2 * 1 / (2 + 2))


def test_evaluator_all_and_positive_subset():
    ev = SegEvaluator(2, class_names=["background", "pneumothorax"])
    gt1 = np.array([[0, 1], [1, 1]]); p1 = np.array([[0, 1], [0, 1]])      # positive image
    gt2 = np.zeros((2, 2), int); p2 = np.array([[1, 0], [0, 0]])            # negative, one FP
    gt3 = np.array([[0, 255], [0, 0]]); p3 = np.zeros((2, 2), int)          # negative, ignore pixel
    ev.add(p1, gt1, positive=True)
    ev.add(p2, gt2, positive=False)
    ev.add(p3, gt3)  # positive inferred from gt -> negative
    r = ev.result()
    # all: conf = [[1,0],[1,2]] + [[3,1],[0,0]] + [[3,0],[0,0]] = [[7,1],[1,2]]
    np.testing.assert_array_equal(ev.conf_all, [[7, 1], [1, 2]])
    assert r["miou_all"] == pytest.approx((7 / 9 + 2 / 4) / 2)
    # positive only: [[1,0],[1,2]]
    assert r["miou_pos"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r["dice"] == pytest.approx((2 * 2 / (2 + 3) + 0.0 + 1.0) / 3)
    assert r["n_images"] == 3 and r["n_pos"] == 1
    assert r["iou_pos"]["pneumothorax"] == pytest.approx(2 / 3)
    ev.reset()
    assert math.isnan(ev.result()["miou_pos"])


def test_miou_pools_pixels_not_images():
    # one big and one small image: pooled IoU differs from the mean of per-image IoUs
    ev = SegEvaluator(2)
    g = np.zeros((10, 10), int); g[:5] = 1
    ev.add(g, g, True)                        # perfect, 50 fg pixels
    g2 = np.array([[1, 0]]); p2 = np.array([[0, 1]])
    ev.add(p2, g2, True)                      # all wrong, 1 px each
    np.testing.assert_array_equal(ev.conf_pos, [[50, 1], [1, 50]])
    assert ev.result()["miou_pos"] == pytest.approx(50 / 52)


def test_multilabel_f1():
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    labels = np.array([[1, 0], [0, 1], [0, 1]])
    # class 0: TP1 FP1 FN0 ; class 1: TP1 FP0 FN1 -> micro: 2*2/(4+1+1)
    assert multilabel_f1(probs, labels) == pytest.approx(4 / 6)
    assert multilabel_f1(probs, labels, average="macro") == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert multilabel_f1(torch.tensor(probs), torch.tensor(labels), 0.95) == 0.0
