"""The full fine-tuning baseline of a run: its key, lookup, and the deltas against it.

Two runs share a baseline when they share the model, the task and its data subset, the
seed and the training budget. The tier spec is not part of the key.
"""

import hashlib
import json
import logging
from pathlib import Path

import mlflow
from filelock import FileLock
from omegaconf import OmegaConf

logger = logging.getLogger(__name__)

# Train settings that cannot change a run's metrics; every other `train` key is in the key.
# The activation cache is exact, so it is left out too.
NON_RESULT_TRAIN_KEYS = ("progress_bar", "log_every", "eval_batch_size", "activation_cache", "activation_cache_max_mb")
DATA_KEYS = ("name", "source", "train_size", "subsample_seed", "max_length")
CSV_FILES = ("train.csv", "validation.csv", "test.csv")
DELTA_METRICS = ("accuracy", "macro_f1", "mcc", "loss")


def key_fields(cfg) -> dict:
    """Return the fields that decide which baseline a run compares against."""
    train = OmegaConf.to_container(cfg.train, resolve=True)
    return {
        "model": str(cfg.model.pretrained),
        "task": {key: cfg.task.get(key) for key in DATA_KEYS} | {"data": data_fingerprint(cfg.task.get("data_dir"))},
        "seed": int(cfg.seed),
        "budget": {key: value for key, value in train.items() if key not in NON_RESULT_TRAIN_KEYS},
        "baseline_tier": OmegaConf.to_container(cfg.baseline_tier, resolve=True),
    }


def data_fingerprint(data_dir) -> str | None:
    """Hash the CSV files of `task.data_dir`, so edited data gets a new baseline."""
    if not data_dir:
        return None
    digest = hashlib.sha256()
    for name in CSV_FILES:
        path = Path(data_dir) / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def baseline_key(cfg) -> str:
    """Hash `key_fields` into a short stable id (tag `baseline_key`)."""
    text = json.dumps(key_fields(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def baseline_config(cfg):
    """Return `cfg` with the tier replaced by full fine-tuning at `baseline_tier`."""
    baseline = OmegaConf.to_container(cfg, resolve=True)
    baseline["tier"] = OmegaConf.to_container(cfg.baseline_tier, resolve=True)
    return OmegaConf.create(baseline)


def find_baseline(experiment_id: str, key: str):
    """Return the newest FINISHED baseline run with `key`, or None."""
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.role = 'baseline' AND tags.baseline_key = '{key}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def baseline_lock(cfg, key: str) -> FileLock:
    """Return a lock that lets one process at a time look up or create the baseline for `key`.

    NOTE: the lock is a file under `tracking.root`, so it serialises jobs on one machine or a
    shared file system. Jobs on machines that share only a tracking server can each create one.
    """
    lock_dir = Path(cfg.tracking.root).resolve() / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock_dir / f"baseline-{key}.lock"))


def deltas(summary: dict, baseline_run) -> dict:
    """Return run-minus-baseline metrics, the speedup and the trainable-parameter ratio."""
    base = baseline_run.data.metrics
    result = {}
    for prefix in ("best_val_", "test_"):
        for name in (*DELTA_METRICS, "metric"):
            metric = f"{prefix}{name}"
            if metric in summary and metric in base:
                result[f"delta_{metric}"] = summary[metric] - base[metric]
    result["speedup"] = base["train_time_s"] / summary["train_time_s"]
    result["trainable_ratio"] = summary["trainable_params"] / base["trainable_params"]
    return result
