"""Stratified sampling: training subsets and held-out splits with class proportions kept."""

import logging

import numpy as np
from datasets import Dataset

logger = logging.getLogger(__name__)


def stratified_sample(labels, size: int, seed: int) -> np.ndarray:
    """Draw `size` row indices, per class in proportion to the class counts.

    Returns the indices in ascending order. Class quotas use largest-remainder
    rounding, so they add up to `size`, differ from the exact proportion by
    less than one row, and never exceed a class's count. A class can get zero
    rows when `size` is small. The result depends only on `labels`, `size` and
    `seed`.

    NOTE: this is written here because `Dataset.train_test_split` and scikit-learn's
    stratified splitters raise for a class with a single member, or when `size`
    is below the number of classes.
    """
    labels = np.asarray(labels)
    if not 0 <= size <= len(labels):
        raise ValueError(f"sample size {size} is outside [0, {len(labels)}]")

    classes, counts = np.unique(labels, return_counts=True)

    # Integer arithmetic keeps the quotas exact: floor of size * count / total,
    # then one more row for the classes with the largest remainders.
    quotas, remainders = np.divmod(size * counts, len(labels))
    shortfall = size - quotas.sum()
    by_remainder = np.argsort(-remainders, kind="stable")
    quotas[by_remainder[:shortfall]] += 1

    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(labels == label))[:quota]
        for label, quota in zip(classes, quotas)
    ]
    return np.sort(np.concatenate(chosen))


def split_off(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into the remaining rows and a stratified held-out part of `fraction`.

    Returns `(remaining, held_out)`, both in ascending order. The held-out part has
    `round(fraction * len(labels))` rows.
    """
    labels = np.asarray(labels)
    held_out = stratified_sample(labels, round(fraction * len(labels)), seed)
    remaining = np.setdiff1d(np.arange(len(labels)), held_out)
    return remaining, held_out


def subsample(dataset: Dataset, size: int, seed: int) -> Dataset:
    """Return a stratified subsample of `size` rows of a dataset with a `label` column."""
    labels = np.asarray(dataset["label"])
    indices = stratified_sample(labels, size, seed)
    sample = dataset.select(indices)

    missing = sorted(set(labels.tolist()) - set(labels[indices].tolist()))
    if missing:
        logger.warning(
            "stratified subsample of %d rows has no rows of the label ids %s: "
            "those classes are too rare for this sample size",
            size, missing,
        )

    return sample
