"""A short, readable summary of a loaded task: source, split sizes and label counts."""

import numpy as np
import pandas as pd
from datasets import DatasetDict

from harness.data.config import validate_task_config
from harness.data.sources import describe_source


def summarize_task(raw: DatasetDict, task_cfg) -> str:
    """Describe the task data: its source, then one table row per split with label counts."""
    cfg = validate_task_config(task_cfg)
    label_names = list(cfg["label_names"])

    rows = {}
    for split, dataset in raw.items():
        counts = np.bincount(np.asarray(dataset["label"]), minlength=len(label_names))
        rows[split] = {"rows": len(dataset), **dict(zip(label_names, counts.tolist()))}
    table = pd.DataFrame.from_dict(rows, orient="index")

    lines = [f"task {cfg['name']}: {describe_source(cfg)}"]
    if cfg["train_size"] is not None:
        lines.append(
            f"train is a stratified subsample of {cfg['train_size']} rows "
            f"(task.subsample_seed={cfg['subsample_seed']})"
        )
    lines.append(f"main metric: {cfg['metric']}, max_length: {cfg['max_length']} tokens")
    lines.append(table.to_string())
    return "\n".join(lines)
