"""Task data: load, validate, subsample, tokenize, batch and summarize.

Typical use::

    raw = load_task(task_cfg)
    tokenized = tokenize_task(raw, tokenizer, task_cfg)
    train_loader = make_loader(tokenized["train"], tokenizer, batch_size, shuffle=True, seed=0)
"""

from harness.data.config import cache_dir, validate_task_config
from harness.data.loading import load_task
from harness.data.sampling import stratified_sample
from harness.data.summary import summarize_task
from harness.data.tokenization import make_loader, tokenize_task

__all__ = [
    "cache_dir",
    "load_task",
    "make_loader",
    "stratified_sample",
    "summarize_task",
    "tokenize_task",
    "validate_task_config",
]
