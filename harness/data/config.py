"""Task config: conversion to a plain dict, validation, and the cache folder."""

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.metrics import METRIC_NAMES

SOURCES = ("bbc_news", "csv", "hub")
SPLITS = ("train", "validation", "test")

# Every task YAML carries all of these keys, with null where a key is unused.
REQUIRED_KEYS = (
    "name", "source", "data_dir", "hub", "text_columns", "num_labels", "label_names",
    "metric", "train_size", "subsample_seed", "max_length",
)
HUB_KEYS = ("path", "name", "revision", "text_columns", "label_column", "splits")

DEFAULT_CACHE_DIR = "~/.cache/layerwise-harness"


def task_config_dict(task_cfg) -> dict:
    """Return the task config as a plain dict, resolving OmegaConf interpolations."""
    if isinstance(task_cfg, DictConfig):
        return OmegaConf.to_container(task_cfg, resolve=True)
    return dict(task_cfg)


def cache_dir() -> Path:
    """Return the harness cache folder: `$HARNESS_CACHE_DIR`, else ~/.cache/layerwise-harness."""
    return Path(os.environ.get("HARNESS_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


def validate_task_config(task_cfg) -> dict:
    """Check the task config keys and values, and return the config as a plain dict.

    Raises `ConfigError` for the first invalid value. This checks the config only,
    and `load_task` checks the data itself.
    """
    cfg = task_config_dict(task_cfg)

    missing = [key for key in REQUIRED_KEYS if key not in cfg]
    if missing:
        raise ConfigError(
            f"task config is missing the keys {missing}: every task YAML in conf/task "
            f"must set {list(REQUIRED_KEYS)}, with null where a key is unused"
        )

    _check_source(cfg)
    _check_labels(cfg)
    _check_text_columns(cfg["text_columns"], "task.text_columns")

    if cfg["metric"] not in METRIC_NAMES:
        raise ConfigError(
            f"unknown task.metric={cfg['metric']!r}: use one of {list(METRIC_NAMES)}"
        )

    train_size = cfg["train_size"]
    if train_size is not None and not _is_positive_int(train_size):
        raise ConfigError(
            f"invalid task.train_size={train_size!r}: pass a positive number of training "
            "rows, or null to train on the whole training split"
        )

    if not _is_int(cfg["subsample_seed"]):
        raise ConfigError(
            f"invalid task.subsample_seed={cfg['subsample_seed']!r}: pass an integer"
        )

    if not _is_positive_int(cfg["max_length"]):
        raise ConfigError(
            f"invalid task.max_length={cfg['max_length']!r}: pass a positive number of tokens"
        )

    return cfg


def _check_source(cfg: dict) -> None:
    source = cfg["source"]
    if source not in SOURCES:
        raise ConfigError(
            f"unknown task.source={source!r}: use one of {list(SOURCES)}, "
            "or set task.data_dir=DIR to read train.csv and validation.csv from DIR"
        )

    if source == "csv" and cfg["data_dir"] is None:
        raise ConfigError(
            "task.source='csv' needs task.data_dir: pass task.data_dir=DIR, a folder "
            "with train.csv, validation.csv and an optional test.csv"
        )

    if source == "hub" and cfg["data_dir"] is None:
        _check_hub(cfg["hub"], cfg["text_columns"])


def _check_hub(hub, text_columns) -> None:
    if not isinstance(hub, dict):
        raise ConfigError(
            f"task.source='hub' needs a task.hub mapping with the keys {list(HUB_KEYS)}, "
            f"got {hub!r}"
        )

    missing = [key for key in HUB_KEYS if key not in hub]
    if missing:
        raise ConfigError(
            f"task.hub is missing the keys {missing}: set {list(HUB_KEYS)}, "
            "with null where a key is unused"
        )

    _check_text_columns(hub["text_columns"], "task.hub.text_columns")
    if len(hub["text_columns"]) != len(text_columns):
        raise ConfigError(
            f"task.hub.text_columns={hub['text_columns']!r} and task.text_columns="
            f"{text_columns!r} must have the same length: the hub columns are renamed "
            "to the task columns in order"
        )

    splits = hub["splits"]
    valid_splits = isinstance(splits, dict) and set(splits) <= set(SPLITS)
    if not valid_splits or not splits.get("train"):
        raise ConfigError(
            f"invalid task.hub.splits={splits!r}: map train, validation and test to hub "
            "split names, for example {train: train, validation: validation, test: null}"
        )


def _check_labels(cfg: dict) -> None:
    num_labels = cfg["num_labels"]
    if not _is_int(num_labels) or num_labels < 2:
        raise ConfigError(
            f"invalid task.num_labels={num_labels!r}: pass the number of classes, at least 2"
        )

    label_names = cfg["label_names"]
    if not isinstance(label_names, list) or len(label_names) != num_labels:
        raise ConfigError(
            f"task.label_names={label_names!r} must list one name per class, "
            f"{num_labels} names for task.num_labels={num_labels}"
        )

    if len(set(label_names)) != len(label_names):
        raise ConfigError(f"task.label_names={label_names!r} contains duplicate names")


def _check_text_columns(columns, key: str) -> None:
    if not isinstance(columns, list) or len(columns) not in (1, 2):
        raise ConfigError(
            f"invalid {key}={columns!r}: list one text column, or two for a sentence-pair "
            "task, for example [text] or [text_a, text_b]"
        )

    if "label" in columns:
        raise ConfigError(f"invalid {key}={columns!r}: 'label' is the label column, not a text column")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value) -> bool:
    return _is_int(value) and value > 0
