"""Metrics against hand-computed confusion matrices (Viniavskyi et al., AIME 2020, appendix)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss_fast.metrics import (BatchedSweeps, SegEvaluator, add_sweep, confusion_matrix, dice_per_image, miou,
                               sweep_counts, threshold_sweep)


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


THRESHOLDS = [0.5, 0.1, 0.9, 0.25, 0.5, 0.0, 1.0]  # unsorted, repeated, the ends


def _sweep_case(rng, n_cls, case, h=23, w=31):
    best = rng.random((h, w)).astype(np.float32)
    best[rng.random((h, w)) < 0.15] = 0.25  # ties with a threshold: background
    best[0, :3] = np.nan
    label = rng.integers(1, n_cls, (h, w))
    gt = rng.integers(0, n_cls, (h, w))
    gt[rng.random((h, w)) < 0.1] = 255
    if case == 1:
        gt[gt != 255] = 0  # a negative image
    if case == 2:
        best[:] = -np.inf  # no class maps
    if case == 3:
        best[:] = 0.95  # foreground everywhere below 1.0
    return best, label, gt


@pytest.mark.parametrize("n_cls", [2, 4])
def test_threshold_sweep_equals_one_prediction_per_threshold(device, n_cls):
    rng = np.random.default_rng(n_cls)
    for case in range(5):
        best, label, gt = _sweep_case(rng, n_cls, case)
        conf, dice = threshold_sweep(torch.from_numpy(best).to(device), torch.from_numpy(label).to(device),
                                     torch.from_numpy(gt).to(device), THRESHOLDS, n_cls)
        assert conf.shape == (len(THRESHOLDS), n_cls, n_cls) and dice.shape == (len(THRESHOLDS),)
        for i, t in enumerate(THRESHOLDS):
            pred = np.where(best > np.float32(t), label, 0)
            np.testing.assert_array_equal(conf[i], confusion_matrix(pred, gt, n_cls), err_msg=f"case {case}, t {t}")
            assert dice[i] == pytest.approx(dice_per_image(pred, gt), abs=1e-12), (case, t)


def test_add_sweep_equals_add_per_threshold():
    rng = np.random.default_rng(7)
    one = [SegEvaluator(3) for _ in THRESHOLDS]
    swept = [SegEvaluator(3) for _ in THRESHOLDS]
    for case in range(5):
        best, label, gt = _sweep_case(rng, 3, case)
        positive = case != 1
        for ev, t in zip(one, THRESHOLDS):
            ev.add(np.where(best > np.float32(t), label, 0), gt, positive)
        add_sweep(swept, best, label, gt, THRESHOLDS, positive)
    for a, b in zip(one, swept):
        np.testing.assert_array_equal(a.conf_all, b.conf_all)
        np.testing.assert_array_equal(a.conf_pos, b.conf_pos)
        assert (a.n_images, a.n_pos) == (b.n_images, b.n_pos) == (5, 4)
        assert a.dices == pytest.approx(b.dices, abs=1e-12)
    ev = SegEvaluator(3)
    ev.add_counts(np.array([[4, 0, 0], [0, 0, 0], [0, 0, 0]]), 1.0)  # no truth foreground: negative
    assert (ev.n_images, ev.n_pos) == (1, 0)


@pytest.mark.parametrize("n_cls", [2, 4])
def test_sweep_counts_equals_threshold_sweep_and_never_waits(device, host_reads, n_cls):
    """The walk's choice on val counts on the device: the same matrices and Dice as
    threshold_sweep (bit for bit), no bad pixel on valid input, and no wait for the GPU."""
    rng = np.random.default_rng(10 + n_cls)
    ts = torch.tensor(THRESHOLDS, dtype=torch.float32, device=device)
    for case in range(5):
        best, label, gt = _sweep_case(rng, n_cls, case)
        args = [torch.from_numpy(a).to(device) for a in (best, label, gt)]
        with host_reads(device) as reads:
            conf, dice, bad = sweep_counts(*args, ts, n_cls)
        assert reads.count == 0, reads.where
        want_conf, want_dice = threshold_sweep(*args, THRESHOLDS, n_cls)
        np.testing.assert_array_equal(conf.cpu().numpy(), want_conf)
        np.testing.assert_array_equal(dice.cpu().numpy(), want_dice)
        assert bad.tolist() == [0, 0]


def test_sweep_counts_counts_bad_pixels_instead_of_raising():
    best, label, gt = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    ts = torch.tensor([0.5])
    gt[0, 0], gt[1, 2] = 7, 255  # one outside [0, 2), one ignored
    assert sweep_counts(best, label, gt, ts, 2)[2].tolist() == [1, 0]
    best[0, :2] = 1.0  # foreground with label 0 and 2: both outside [1, 2)
    label[0, 0], label[0, 1] = 0, 2
    assert sweep_counts(best, label, gt * 0, ts, 2)[2].tolist() == [0, 2]


def test_batched_sweeps_add_what_add_sweep_adds(device):
    """Counted on the maps' device and added at ``flush``: the same evaluators as add_sweep per
    image, over two flushes; nothing is added before the flush."""
    rng = np.random.default_rng(3)
    one = [SegEvaluator(3) for _ in THRESHOLDS]
    batched = [SegEvaluator(3) for _ in THRESHOLDS]
    sweeps = BatchedSweeps(THRESHOLDS, device)
    for case in range(5):
        best, label, gt = _sweep_case(rng, 3, case)
        add_sweep(one, best, label, gt, THRESHOLDS, case != 1)
        sweeps.add(batched, *(torch.from_numpy(a).to(device) for a in (best, label, gt)), case != 1, f"image {case}")
        if case == 1:
            assert batched[0].n_images == 0
            sweeps.flush()
    sweeps.flush()
    for a, b in zip(one, batched):
        np.testing.assert_array_equal(a.conf_all, b.conf_all)
        np.testing.assert_array_equal(a.conf_pos, b.conf_pos)
        assert (a.n_images, a.n_pos) == (b.n_images, b.n_pos) == (5, 4)
        assert a.dices == pytest.approx(b.dices, abs=1e-12)


def test_batched_sweeps_name_the_image_with_bad_values():
    sweeps = BatchedSweeps([0.5], "cpu")
    best, label, gt = torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    sweeps.add([SegEvaluator(2)], best, label, gt, True, "image a")
    sweeps.add([SegEvaluator(2)], best, label * 2, gt + 7, True, "image b")
    with pytest.raises(ValueError, match=r"image b: 6 mask pixels outside \[0, 2\) other than 255, 6 labels"):
        sweeps.flush()
    with pytest.raises(ValueError, match="2 evaluators for 1 thresholds"):
        sweeps.add([SegEvaluator(2)] * 2, best, label, gt, True, "image c")


def test_threshold_sweep_errors():
    best, label, gt = np.zeros((2, 3), np.float32), np.ones((2, 3), np.int64), np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="same shape"):
        threshold_sweep(best[:, :2], label, gt, [0.5], 2)
    with pytest.raises(ValueError, match="gt has values"):
        threshold_sweep(best, label, gt + 2, [0.5], 2)
    with pytest.raises(ValueError, match=r"label has values outside \[1, 2\)"):
        threshold_sweep(best + 1, label * 0, gt, [0.5], 2)
    threshold_sweep(best, label * 0, gt, [0.5], 2)  # labels are not read where nothing is foreground
    with pytest.raises(ValueError, match="2 evaluators for 1 thresholds"):
        add_sweep([SegEvaluator(2), SegEvaluator(2)], best, label, gt, [0.5])
    with pytest.raises(ValueError, match=r"conf must be \[2, 2\]"):
        SegEvaluator(2).add_counts(np.zeros((3, 3)), 1.0)
