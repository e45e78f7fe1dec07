"""Tests for harness.metrics.compute_metrics."""

import math

import numpy as np
import pytest
import torch

from harness.metrics import METRIC_NAMES, compute_metrics


def test_metrics_perfect_predictions():
    metrics = compute_metrics([0, 1, 2, 2], [0, 1, 2, 2])

    assert metrics == {"accuracy": 1.0, "macro_f1": 1.0, "mcc": 1.0}


def test_metrics_binary_hand_computed():
    # Confusion matrix: TP=3, FN=1, FP=1, TN=1.
    labels = [1, 1, 1, 1, 0, 0]
    predictions = [1, 1, 1, 0, 1, 0]

    metrics = compute_metrics(labels, predictions)

    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # F1 of class 1 is 2*3 / (2*3 + 1 + 1) = 0.75, of class 0 is 2*1 / (2*1 + 1 + 1) = 0.5.
    assert metrics["macro_f1"] == pytest.approx((0.75 + 0.5) / 2)
    assert metrics["mcc"] == pytest.approx((3 * 1 - 1 * 1) / math.sqrt(4 * 4 * 2 * 2))


def test_metrics_macro_f1_weighs_rare_class_equally():
    # Always predicting the majority class: high accuracy, low macro F1, zero MCC.
    labels = [0] * 9 + [1]
    predictions = [0] * 10

    metrics = compute_metrics(labels, predictions)

    assert metrics["accuracy"] == pytest.approx(0.9)
    assert metrics["macro_f1"] == pytest.approx((18 / 19 + 0.0) / 2)
    assert metrics["mcc"] == 0.0


def test_metrics_names_and_float_types():
    metrics = compute_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]))

    assert tuple(metrics) == METRIC_NAMES
    assert all(type(value) is float for value in metrics.values())


def test_metrics_accept_tensors():
    metrics = compute_metrics(torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2]))

    assert metrics["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("labels, predictions, message", [
    ([0, 1, 1], [0, 1], "differ in length"),
    ([0, 1], [[0.2, 0.8], [0.6, 0.4]], "argmax of the logits"),
    ([], [], "empty"),
])
def test_metrics_reject_invalid_input(labels, predictions, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(labels, predictions)
