"""MLflow tracking: where runs go, and what each run records (params, tags, metrics, artifacts)."""

import logging
import re
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path

import mlflow
import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from filelock import FileLock
from omegaconf import OmegaConf

from harness.errors import ConfigError

logger = logging.getLogger(__name__)

# MLflow rejects param values longer than this; longer values live in config.yaml.
MAX_PARAM_LENGTH = 6000
METRIC_NAMES = ("accuracy", "macro_f1", "mcc", "loss")
# Seconds that a run waits for an MLflow server to accept a connection. MLflow's own HTTP
# retries with backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES) take minutes before an unreachable server fails a run.
SERVER_PROBE_TIMEOUT_S = 10
# The password of a URL such as postgresql://user:password@host/db (a storage or tracking URI).
URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s]+(?=@)")


def mask_passwords(text: str) -> str:
    """Replace the password of every URL in `text` with `***`, so params and artifacts leak none."""
    return URL_PASSWORD.sub(r"\g<head>***", text)


def tracking_uri(tracking_cfg) -> str:
    """Return `tracking.uri`, or the embedded SQLite database under `tracking.root`."""
    if tracking_cfg.uri:
        return str(tracking_cfg.uri)
    return f"sqlite:///{Path(tracking_cfg.root).resolve() / 'mlruns.db'}"


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"The tracking folder {str(folder)!r} is not writable ({error}). "
            "Set tracking.root (or the path in tracking.uri=sqlite:///...) to a writable folder, "
            "or tracking.uri to an MLflow server."
        ) from error


def _check_server(uri: str) -> None:
    """Raise ConfigError if nothing accepts connections at the MLflow server `uri` (http or https)."""
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=SERVER_PROBE_TIMEOUT_S)
    except requests.RequestException as error:
        raise ConfigError(
            f"tracking.uri={mask_passwords(uri)!r} is unreachable ({type(error).__name__}). Start the MLflow "
            "server (mlflow server --host 127.0.0.1 --port 5000), fix the URI, or set tracking.uri=null "
            "to record runs in the SQLite database under tracking.root."
        ) from error


def _sqlite_folder(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).resolve().parent


def start_tracking(tracking_cfg) -> str:
    """Point MLflow at the tracking store and return the experiment id, creating it if needed.

    A SQLite store gets its artifacts in `mlartifacts/` beside the database file.
    """
    uri = tracking_uri(tracking_cfg)
    folder = _sqlite_folder(uri)
    artifact_location = None
    if folder is not None:
        _check_writable(folder)
        artifact_location = (folder / "mlartifacts").as_uri()
    if uri.startswith(("http://", "https://")):
        _check_server(uri)

    mlflow.set_tracking_uri(uri)
    # The first access creates the SQLite schema, and two processes that do it at once can
    # leave a broken database, so processes that share the folder take turns.
    lock = FileLock(str(folder / ".mlruns.db.lock")) if folder is not None else nullcontext()
    with lock:
        experiment = mlflow.get_experiment_by_name(tracking_cfg.experiment)
        if experiment is None:
            experiment_id = _create_experiment(tracking_cfg.experiment, artifact_location)
        else:
            experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _create_experiment(name: str, artifact_location) -> str:
    # Workers that start together on a fresh store race to create the experiment; the loser
    # reads the winner's.
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def git_state() -> tuple[str, str]:
    """Return the commit of the code that runs and whether its work tree has changes."""
    package_dir = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=package_dir, capture_output=True, text=True, check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=package_dir, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", "unknown"
    return commit, str(bool(status.strip())).lower()


def flatten_config(cfg) -> dict:
    """Flatten the resolved config to dotted keys with string values short enough for MLflow."""
    flat = {}

    def visit(prefix, node):
        if isinstance(node, dict):
            for key, value in node.items():
                visit(f"{prefix}.{key}" if prefix else str(key), value)
            return
        text = mask_passwords(str(node))
        if len(text) > MAX_PARAM_LENGTH:
            text = text[: MAX_PARAM_LENGTH - 30] + "... (see config.yaml)"
        flat[prefix] = text

    visit("", OmegaConf.to_container(cfg, resolve=True))
    return flat


def log_setup(cfg, plan, data_summary: str) -> None:
    """Log the config as params and artifacts, and the tier table, to the active run."""
    params = flatten_config(cfg)
    params.update({f"tier_lr.{name}": str(lr) for name, lr in plan.tier_lrs.items()})
    items = list(params.items())
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))

    mlflow.log_text(mask_passwords(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")
    mlflow.log_text(plan.render(), "tier_table.txt")
    mlflow.log_text(plan.to_frame().to_csv(index=False), "tier_table.csv")
    mlflow.log_text(data_summary, "data_summary.txt")


def log_epoch(run_id: str, epoch: int, metrics: dict, train_losses: list) -> None:
    """Log one epoch's validation metrics and the train losses since the last epoch."""
    timestamp = int(time.time() * 1000)
    batch = [Metric(f"val_{name}", float(metrics[name]), timestamp, epoch) for name in METRIC_NAMES]
    batch += [Metric("train_loss", loss, timestamp, step) for step, loss in train_losses]
    client = mlflow.MlflowClient()
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start:start + 1000])


def summary_metrics(result, plan, metric_name: str, total_params: int) -> dict:
    """Return the run's summary metrics, with the names that the run contract in docs/architecture.md defines."""
    summary = {}
    for name in METRIC_NAMES:
        summary[f"best_val_{name}"] = result.best[name]
        summary[f"final_val_{name}"] = result.final[name]
        if result.test:
            summary[f"test_{name}"] = result.test[name]
    summary["best_val_metric"] = result.best[metric_name]
    if result.test:
        summary["test_metric"] = result.test[metric_name]

    trainable = plan_trainable_params(plan)
    summary.update(
        best_epoch=result.best_epoch,
        train_time_s=result.train_time_s,
        train_samples_per_s=result.samples_per_s,
        peak_memory_mb=result.peak_memory_mb,
        trainable_params=trainable,
        total_params=total_params,
        trainable_fraction=trainable / total_params,
        train_val_gap=result.train_accuracy - result.final["accuracy"],
        activation_cache_mb=result.activation_cache_mb,
        drift_mean=sum(result.drift.values()) / len(result.drift),
    )
    for tier, marks in result.tier_lrs.items():
        for mark, lr in marks.items():
            summary[f"lr_{tier}_{mark}"] = lr
    for depth, drift in result.drift.items():
        summary[f"drift_depth_{depth}"] = drift
    return summary


def plan_trainable_params(plan) -> int:
    """Count the parameters the optimizer updates at some point of the run."""
    return sum(param.numel() for group in plan.param_groups for param in group["params"])
