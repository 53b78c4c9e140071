"""Multi-label F1 of the step-1 classifier: micro (model selection) and macro."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_fast.metrics import multilabel_f1


def test_multilabel_f1():
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    labels = np.array([[1, 0], [0, 1], [0, 1]])
    # class 0: TP1 FP1 FN0 ; class 1: TP1 FP0 FN1 -> micro: 2*2/(4+1+1)
    assert multilabel_f1(probs, labels) == pytest.approx(4 / 6)
    assert multilabel_f1(probs, labels, average="macro") == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert multilabel_f1(torch.tensor(probs), torch.tensor(labels), 0.95) == 0.0


def test_micro_and_macro_differ_and_absent_classes_are_left_out():
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.7, 0.3, 0.2]])
    labels = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0]])
    # class 0: TP3; class 1: FN1, never predicted; class 2: in neither labels nor predictions
    out = multilabel_f1(probs, labels, average="all")
    assert out["micro"] == pytest.approx(6 / 7)  # 2*3 / (2*3 + 0 + 1), summed over the pairs
    assert out["macro"] == pytest.approx(0.5)    # (1 + 0) / 2: class 2 has no F1
    assert out["per_class"][:2] == [1.0, 0.0] and np.isnan(out["per_class"][2])
    assert multilabel_f1(probs, labels, average="macro") == out["macro"]


def test_a_probability_at_the_threshold_is_a_positive():
    assert multilabel_f1(np.array([[0.5]]), np.array([[1]])) == 1.0
    # 1-D: one class (SIIM); TP1 FP1 at the threshold 0.3
    assert multilabel_f1(np.array([0.3, 0.3]), np.array([1, 0]), threshold=0.3) == pytest.approx(2 / 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="average must be"):
        multilabel_f1(np.ones((2, 2)), np.ones((2, 2)), average="weighted")
    with pytest.raises(ValueError, match="same shape"):
        multilabel_f1(np.ones((2, 2)), np.ones((2, 3)))
