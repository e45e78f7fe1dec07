"""Tokenization with an on-disk cache, and batching with dynamic padding."""

import hashlib
import json
import logging

import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from harness.data.config import cache_dir, validate_task_config
from harness.errors import ConfigError

logger = logging.getLogger(__name__)

# Backend tokenizer settings that calls with `truncation` or `padding` change in
# place: they are left out of the tokenizer fingerprint.
CALL_SETTINGS = ("truncation", "padding")


def tokenize_task(raw: DatasetDict, tokenizer, task_cfg) -> DatasetDict:
    """Tokenize every split, truncating to `task.max_length` tokens without padding.

    Returns a `DatasetDict` with the columns `input_ids`, `attention_mask`,
    `token_type_ids` (when the tokenizer returns them) and `labels`. Padding
    happens per batch in `make_loader`. Each split is written to an Arrow file
    in `<cache dir>/tokenized`, named by a fingerprint of the split's data, the
    tokenizer and `task.max_length`. A later call on the same data, in this or
    another process, reads that file and does not tokenize again.
    """
    cfg = validate_task_config(task_cfg)
    text_columns = cfg["text_columns"]
    max_length = cfg["max_length"]
    if max_length > tokenizer.model_max_length:
        raise ConfigError(
            f"task.max_length={max_length} is larger than the tokenizer's model_max_length="
            f"{tokenizer.model_max_length}: pass task.max_length={tokenizer.model_max_length} or less"
        )

    folder = cache_dir() / "tokenized"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_fingerprint = fingerprint_tokenizer(tokenizer)

    def tokenize_batch(batch: dict) -> dict:
        texts = [batch[column] for column in text_columns]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    tokenized = {}
    for split, dataset in raw.items():
        # NOTE: `_fingerprint` is private, but it is the hash that datasets itself uses to
        # name its cache files: it follows the source files and every transform applied.
        key = _hash([dataset._fingerprint, tokenizer_fingerprint, max_length, text_columns])
        path = folder / f"{cfg['name']}-{split}-{key}.arrow"
        logger.info(
            "tokenizing %s/%s: %s", cfg["name"], split,
            f"cache hit, reading {path}" if path.exists() else f"cache miss, writing {path}",
        )

        dataset = dataset.map(
            tokenize_batch,
            batched=True,
            remove_columns=text_columns,
            cache_file_name=str(path),
            load_from_cache_file=True,
            new_fingerprint=key,
            desc=f"Tokenizing {cfg['name']}/{split}",
        )
        tokenized[split] = dataset.rename_column("label", "labels")

    return DatasetDict(tokenized)


def fingerprint_tokenizer(tokenizer) -> str:
    """Hash the tokenizer's class and its full vocabulary, normalizer and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        for setting in CALL_SETTINGS:
            state.pop(setting, None)
    else:
        state = sorted(tokenizer.get_vocab().items())

    return _hash([type(tokenizer).__name__, state, tokenizer.all_special_tokens])


def _hash(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_loader(
    dataset: Dataset, tokenizer, batch_size: int, shuffle: bool = False, seed: int = 0,
) -> DataLoader:
    """Build a DataLoader that pads each batch to its longest item.

    The shuffle order comes from a `torch.Generator` seeded with `seed`, so it
    does not depend on the global torch random state.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"invalid batch_size={batch_size!r}: pass a positive integer")

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=DataCollatorWithPadding(tokenizer),
        generator=generator,
    )
