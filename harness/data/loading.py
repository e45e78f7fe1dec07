"""Task loading: read the data source, validate every split, subsample the training split."""

import logging
import re
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Value

from harness.data.config import validate_task_config
from harness.data.sampling import subsample
from harness.data.sources import describe_source, read_bbc_news, read_csv_dir, read_hub
from harness.errors import ConfigError

logger = logging.getLogger(__name__)

INTEGER = re.compile(r"-?\d+")


def load_task(task_cfg) -> DatasetDict:
    """Load, validate and subsample the data of one task.

    Returns a `DatasetDict` with the splits train, validation and, when the source
    has a labelled one, test. Each split has the columns `task.text_columns` and
    `label`, a `ClassLabel` with the names `task.label_names`. `task.data_dir`,
    when set, takes precedence over `task.source`. With `task.train_size` set, the
    training split is a stratified subsample drawn with `task.subsample_seed`,
    which does not depend on the run seed.

    Raises `ConfigError` for an invalid config value, missing files or columns,
    empty splits, missing or empty texts, and labels that are not integers in
    [0, task.num_labels).
    """
    cfg = validate_task_config(task_cfg)

    raw = _read_source(cfg)
    raw = DatasetDict({
        split: _validate_split(dataset, _origin(cfg, split), cfg)
        for split, dataset in raw.items()
    })

    if cfg["train_size"] is not None:
        raw["train"] = _subsample_train(raw["train"], cfg)

    sizes = ", ".join(f"{split} {len(dataset)}" for split, dataset in raw.items())
    logger.info("loaded task %s from %s: %s rows", cfg["name"], describe_source(cfg), sizes)
    return raw


def _read_source(cfg: dict) -> DatasetDict:
    if cfg["data_dir"] is not None:
        return read_csv_dir(cfg["data_dir"], cfg["text_columns"])

    if cfg["source"] == "hub":
        return read_hub(cfg["hub"], cfg["text_columns"])

    return read_bbc_news(cfg["text_columns"], cfg["label_names"])


def _origin(cfg: dict, split: str) -> str:
    """Name a split's origin for error messages: its CSV file, or the split of the source."""
    if cfg["data_dir"] is not None:
        return str(Path(cfg["data_dir"]).expanduser() / f"{split}.csv")
    return f"the {split} split of {describe_source(cfg)}"


def _validate_split(dataset: Dataset, origin: str, cfg: dict) -> Dataset:
    """Check a split's rows and return it with `label` cast to a `ClassLabel`."""
    if len(dataset) == 0:
        raise ConfigError(f"{origin} is empty: every split needs at least one row")

    for column in cfg["text_columns"]:
        for index, text in enumerate(dataset[column]):
            if not text:
                raise ConfigError(
                    f"missing or empty text in column {column!r} at data row {index + 1} of "
                    f"{origin}: fill in the text or remove the row"
                )

    _check_labels(dataset["label"], origin, cfg)

    # Integer strings from CSV files and integer hub labels both cast to int64 first.
    dataset = dataset.cast_column("label", Value("int64"))
    return dataset.cast_column("label", ClassLabel(names=list(cfg["label_names"])))


def _check_labels(labels, origin: str, cfg: dict) -> None:
    num_labels = cfg["num_labels"]
    expected = f"labels must be integer class ids in [0, {num_labels}) for task.num_labels={num_labels}"

    for index, value in enumerate(labels):
        if isinstance(value, str) and INTEGER.fullmatch(value):
            label = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            label = value
        else:
            raise ConfigError(
                f"label {value!r} at data row {index + 1} of {origin} is not an integer: {expected}"
            )

        if not 0 <= label < num_labels:
            raise ConfigError(
                f"label {label} at data row {index + 1} of {origin} is out of range: {expected}. "
                "Fix the label, or set task.num_labels and task.label_names to match the data"
            )


def _subsample_train(train: Dataset, cfg: dict) -> Dataset:
    train_size = cfg["train_size"]
    if train_size > len(train):
        raise ConfigError(
            f"task.train_size={train_size} is larger than the training split "
            f"({len(train)} rows): pass at most {len(train)}, or null to use every row"
        )

    if train_size == len(train):
        return train

    logger.info(
        "training on a stratified subsample of %d of %d rows (task.subsample_seed=%d)",
        train_size, len(train), cfg["subsample_seed"],
    )
    return subsample(train, train_size, cfg["subsample_seed"])
