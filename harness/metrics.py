"""Classification metrics: accuracy, macro F1 and the Matthews correlation coefficient (MCC)."""

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

# The names a task config may give as its main metric (`task.metric`), in the
# order that `compute_metrics` returns them.
METRIC_NAMES = ("accuracy", "macro_f1", "mcc")


def compute_metrics(labels, predictions) -> dict[str, float]:
    """Compute accuracy, macro F1 and MCC from true and predicted class ids.

    `labels` and `predictions` are 1-D sequences of integer class ids of the
    same length (lists, NumPy arrays or CPU tensors). Macro F1 averages over
    the classes that occur in either sequence, and a class with no predicted
    or no true member scores an F1 of 0. MCC is 0.0 when either sequence contains
    a single class.
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)

    if labels.ndim != 1 or predictions.ndim != 1:
        raise ValueError(
            f"expected 1-D class ids, got labels of shape {labels.shape} and "
            f"predictions of shape {predictions.shape}; take the argmax of the logits first"
        )
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels ({labels.shape[0]}) and predictions ({predictions.shape[0]}) differ in length"
        )
    if labels.size == 0:
        raise ValueError("no labels to score: labels and predictions are empty")

    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(labels, predictions)),
    }
