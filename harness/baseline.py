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

BUDGET_KEYS = ("epochs", "max_steps", "batch_size", "warmup_ratio", "scheduler", "weight_decay", "max_grad_norm")
DATA_KEYS = ("name", "source", "data_dir", "train_size", "subsample_seed", "max_length")
DELTA_METRICS = ("accuracy", "macro_f1", "mcc", "loss")


def key_fields(cfg) -> dict:
    """Return the fields that decide which baseline a run compares against."""
    data_dir = cfg.task.get("data_dir")
    return {
        "model": str(cfg.model.pretrained),
        "task": {key: cfg.task.get(key) for key in DATA_KEYS} | {
            "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        },
        "seed": int(cfg.seed),
        "budget": {key: cfg.train.get(key) for key in BUDGET_KEYS},
        "baseline_lr": float(cfg.baseline_tier.lr),
    }


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

    NOTE: a file lock under `tracking.root` serialises jobs on one machine (or a shared
    file system); jobs on machines that share only a tracking server can each create one.
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
