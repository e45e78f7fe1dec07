"""Load harness runs from MLflow (an experiment, a sweep or an Optuna study) into one tidy DataFrame.

One row per run. Column names follow the run contract in docs/architecture.md: tags
keep their names (`model`, `task`, `tier_config`, `role`, `seed`, ...), every metric
keeps its key (`best_val_metric`, `delta_test_metric`, `drift_depth_3`, ...) with its
latest value, and params keep only the per-tier learning rates (`tier_lr.<name>`).
"""

import logging
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from harness.errors import ConfigError

logger = logging.getLogger(__name__)

TAG_COLUMNS = (
    "model", "task", "strategy", "split", "tier_config", "role", "seed", "metric_name",
    "baseline_key", "baseline_run_id", "sweep_id", "study_name", "trial_number", "trial_state",
    "git_commit", "git_dirty", "error",
)
RUN_COLUMNS = ("run_id", "run_name", "experiment_id", "parent_run_id", "status", "start_time", "end_time")
TIER_LR_PREFIX = "tier_lr."
DRIFT_PREFIX = "drift_depth_"
# Run ids per `attributes.run_id IN (...)` filter, to keep each search request short.
IDS_PER_SEARCH = 100


def load_runs(
    tracking_uri: str | None = None,
    *,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    include_baselines: bool = True,
) -> pd.DataFrame:
    """Load the runs of exactly one source (experiment, sweep parent run or study) as a tidy frame.

    `tracking_uri` is any URI that MLflow accepts (`sqlite:///path/mlruns.db`, `http://host:5000`);
    None uses MLflow's default (`MLFLOW_TRACKING_URI`). With `include_baselines`, the
    baseline runs that the loaded layer-wise runs name in `baseline_run_id` are added
    when the source does not contain them, so that paired differences can be computed.
    """
    sources = [name for name, value in (("experiment", experiment), ("parent_run_id", parent_run_id),
                                        ("study_name", study_name)) if value]
    if len(sources) != 1:
        raise ConfigError(
            f"load_runs got the sources {sources or 'none'}; pass exactly one of experiment, "
            "parent_run_id or study_name (with storage)."
        )

    check_sqlite_file(tracking_uri)
    client = MlflowClient(tracking_uri)
    trials = None
    if experiment:
        runs = experiment_runs(client, experiment)
    elif parent_run_id:
        runs = sweep_runs(client, parent_run_id)
    else:
        study = load_study(study_name, storage)
        trials = trials_frame(study)
        runs = runs_by_id(client, trials["run_id"].dropna().tolist())

    frame = tidy_frame(runs)
    if trials is not None:
        frame = merge_trials(frame, trials)
    if include_baselines:
        frame = add_missing_baselines(client, frame)

    logger.info("Loaded %d runs from %s=%r", len(frame), sources[0], experiment or parent_run_id or study_name)
    return frame


def check_sqlite_file(tracking_uri: str | None) -> None:
    """Raise ConfigError when a `sqlite:///` tracking URI names a missing file.

    MLflow would create an empty database there, so a typo in the path would look like a store without runs.
    """
    if not tracking_uri or not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not path.is_file():
        raise ConfigError(
            f"tracking URI {tracking_uri!r} names the SQLite file {str(path.resolve())!r}, which does not exist. "
            "Pass the mlruns.db that the runs were written to (sqlite:////absolute/path/mlruns.db)."
        )


def experiment_runs(client: MlflowClient, name: str) -> list:
    """Return every active run of the experiment called `name`."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ConfigError(
            f"experiment {name!r} was not found at tracking URI {client.tracking_uri!r}. "
            "Check the name (`mlflow experiments search` lists them) or the tracking URI."
        )
    return search_all_pages(client, [experiment.experiment_id], "")


def sweep_runs(client: MlflowClient, parent_run_id: str) -> list:
    """Return the child runs of the sweep parent run `parent_run_id`."""
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException as error:
        raise ConfigError(
            f"parent run {parent_run_id!r} was not found at tracking URI {client.tracking_uri!r} "
            f"({error.message}). Pass the run id of the sweep's parent run."
        ) from error

    filter_string = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    return search_all_pages(client, [parent.info.experiment_id], filter_string)


def load_study(study_name: str, storage: str | None):
    """Load an Optuna study, raising ConfigError when the storage or the study is missing."""
    if not storage:
        raise ConfigError(
            f"study {study_name!r} needs its Optuna storage URL; pass storage "
            "(for example sqlite:///optuna.db)."
        )
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as error:
        raise ConfigError(
            f"study {study_name!r} was not found in storage {storage!r}. "
            "Check the name (`optuna studies --storage URL` lists them)."
        ) from error


def trials_frame(study) -> pd.DataFrame:
    """Return one row per trial: trial_number, trial_state, trial_value and its MLflow run_id.

    `trial_value` is the first objective for multi-objective studies. Trials without the
    `mlflow_run_id` user attribute (for example pruned before their run started) get no run_id.
    """
    rows = []
    for trial in study.get_trials(deepcopy=False):
        rows.append({
            "trial_number": trial.number,
            "trial_state": trial.state.name,
            "trial_value": trial.values[0] if trial.values else np.nan,
            "run_id": trial.user_attrs.get("mlflow_run_id"),
        })
    frame = pd.DataFrame(rows, columns=["trial_number", "trial_state", "trial_value", "run_id"])

    missing = int(frame["run_id"].isna().sum())
    if missing:
        logger.warning("Study %r: %d of %d trials have no mlflow_run_id user attribute", study.study_name,
                       missing, len(frame))
    return frame


def merge_trials(frame: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Replace the trial tags of `frame` with the trial number, state and value stored by Optuna."""
    linked = trials.dropna(subset=["run_id"]).set_index("run_id")
    merged = frame.drop(columns=["trial_number", "trial_state"]).join(linked, on="run_id")
    merged["trial_number"] = merged["trial_number"].astype("Int64")
    return merged


def runs_by_id(client: MlflowClient, run_ids: list[str]) -> list:
    """Return the active runs with the given ids, from any experiment of the tracking store."""
    if not run_ids:
        return []

    experiment_ids = [experiment.experiment_id for experiment in search_all_experiments(client)]
    runs = []
    for start in range(0, len(run_ids), IDS_PER_SEARCH):
        chunk = run_ids[start:start + IDS_PER_SEARCH]
        quoted = ", ".join(f"'{run_id}'" for run_id in chunk)
        runs += search_all_pages(client, experiment_ids, f"attributes.run_id IN ({quoted})")

    found = {run.info.run_id for run in runs}
    missing = [run_id for run_id in run_ids if run_id not in found]
    if missing:
        logger.warning("%d of %d runs were not found (deleted or in another store): %s",
                       len(missing), len(run_ids), ", ".join(missing[:5]))
    return runs


def search_all_experiments(client: MlflowClient) -> list:
    """Return every active experiment, following the result pages."""
    experiments, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, page_token=token)
        experiments += list(page)
        token = page.token
        if not token:
            return experiments


def search_all_pages(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list:
    """Return every active run that matches `filter_string`, following the result pages."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def add_missing_baselines(client: MlflowClient, frame: pd.DataFrame) -> pd.DataFrame:
    """Append the runs named in `baseline_run_id` that `frame` does not contain."""
    missing_ids = set(frame["baseline_run_id"].dropna()) - set(frame["run_id"])
    if not missing_ids:
        return frame

    logger.info("Adding %d baseline runs from outside the source", len(missing_ids))
    extra = tidy_frame(runs_by_id(client, sorted(missing_ids)))
    return pd.concat([frame, extra], ignore_index=True)


def tidy_frame(runs: list) -> pd.DataFrame:
    """Flatten MLflow `Run` objects into one row per run, with typed columns."""
    frame = pd.DataFrame([run_record(run) for run in runs])
    for column in (*RUN_COLUMNS, *TAG_COLUMNS):
        if column not in frame:
            frame[column] = None

    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    frame["trial_number"] = pd.to_numeric(frame["trial_number"], errors="coerce").astype("Int64")
    for column in ("start_time", "end_time"):
        frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)

    drift_columns = [column for column in frame if column.startswith(DRIFT_PREFIX)]
    if drift_columns:
        frame["drift_max"] = frame[drift_columns].max(axis=1)

    leading = [*RUN_COLUMNS, *TAG_COLUMNS]
    tier_lrs = sorted(column for column in frame if column.startswith(TIER_LR_PREFIX))
    metrics = sorted(column for column in frame if column not in leading and column not in tier_lrs)
    return frame[leading + tier_lrs + metrics]


def run_record(run) -> dict:
    """Return one run's attributes, contract tags, tier learning rates and latest metrics as a flat dict."""
    tags = run.data.tags
    record = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
    }
    record.update({name: tags.get(name) for name in TAG_COLUMNS})
    record.update({
        key: to_float(value) for key, value in run.data.params.items() if key.startswith(TIER_LR_PREFIX)
    })
    record.update(run.data.metrics)
    return record


def to_float(text: str) -> float:
    """Parse a logged param as a float, with NaN for values such as `None` (a frozen tier)."""
    try:
        return float(text)
    except ValueError:
        return np.nan
