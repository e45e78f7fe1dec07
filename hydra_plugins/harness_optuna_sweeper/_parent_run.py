"""The MLflow parent run of a study: one per study, shared by its workers, with the best trial at the end.

Each trial's job opens its own run as a child (`optuna_trial.parent_run_id`). The sweeper
uses MlflowClient only and never starts an active run, so jobs that run in the sweeper's
process (Hydra's basic launcher) can start theirs.
"""

import json
import logging
import time

from mlflow import MlflowClient
from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.exceptions import MlflowException

logger = logging.getLogger(__name__)

# Study user attribute with the parent run id, written by the worker that created the study.
PARENT_ATTR = "mlflow_parent_run_id"
# How long a worker that did not create the study waits for its creator to record the parent run.
PARENT_WAIT_S = 60.0
PARENT_POLL_S = 0.5
# Prefix of the parent's metrics copied from the best trial's run.
BEST_PREFIX = "best."


def open_parent_run(study, created: bool, experiment_id: str, tags: dict) -> str:
    """Return the study's parent run id, creating the run if the study has none, and mark it RUNNING."""
    client = MlflowClient()
    run_id = None if created else _wait_for_parent(study)
    if run_id is not None and _run_exists(client, run_id):
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])
        logger.info("Study %s: resuming MLflow parent run %s", study.study_name, run_id)
        return run_id

    run = client.create_run(experiment_id, tags=tags, run_name=f"sweep-{study.study_name}")
    study.set_user_attr(PARENT_ATTR, run.info.run_id)
    logger.info("Study %s: MLflow parent run %s", study.study_name, run.info.run_id)
    return run.info.run_id


def _wait_for_parent(study) -> str | None:
    # NOTE: if the worker that created the study died before it recorded the parent run,
    # every later worker waits PARENT_WAIT_S once, and workers that start together may then
    # each create a parent run.
    deadline = time.monotonic() + PARENT_WAIT_S
    while True:
        run_id = study.user_attrs.get(PARENT_ATTR)
        if run_id is not None or time.monotonic() > deadline:
            return run_id
        time.sleep(PARENT_POLL_S)


def _run_exists(client, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except MlflowException:
        logger.warning("MLflow parent run %s of the study is not in this tracking store: creating a new one", run_id)
        return False
    return True


def tag_trial_state(run_id: str | None, state_name: str) -> None:
    """Set tag `trial_state` (COMPLETE, PRUNED or FAIL) on a trial's run, if the job opened one."""
    if run_id is None:
        return
    try:
        MlflowClient().set_tag(run_id, "trial_state", state_name)
    except MlflowException as error:
        logger.warning("Failed to tag MLflow run %s with trial_state=%s: %s", run_id, state_name, error)


def end_failed_trial_run(run_id: str | None) -> None:
    """Tag a FAIL trial's run `trial_state=FAIL` and end it as FAILED if its job left it RUNNING (a dead worker)."""
    if run_id is None:
        return
    tag_trial_state(run_id, "FAIL")
    client = MlflowClient()
    try:
        if client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
            client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
    except MlflowException as error:
        logger.warning("Failed to end MLflow run %s of a FAIL trial: %s", run_id, error)


def record_best(parent_run_id: str, best: dict, counts: dict) -> None:
    """Log the best trial (number, params, command, its run's metrics) and the trial counts to the parent."""
    client = MlflowClient()
    tags = {
        "best_trial_number": str(best["number"]),
        "best_params": json.dumps(best["params"], sort_keys=True),
        "best_command": best["command"],
    }
    metrics = {f"{BEST_PREFIX}{name}": value for name, value in best["values"].items()}
    run_id = best.get("mlflow_run_id")
    if run_id is not None:
        tags["best_run_id"] = run_id
        try:
            metrics.update({f"{BEST_PREFIX}{name}": value for name, value in client.get_run(run_id).data.metrics.items()})
        except MlflowException as error:
            logger.warning("Failed to read the metrics of the best trial's run %s: %s", run_id, error)
    metrics.update(counts)

    timestamp = int(time.time() * 1000)
    batch = [Metric(name, float(value), timestamp, 0) for name, value in metrics.items()]
    client.log_batch(parent_run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    for start in range(0, len(batch), 1000):
        client.log_batch(parent_run_id, metrics=batch[start:start + 1000])


def finish_parent_run(parent_run_id: str, status: RunStatus) -> None:
    """End the parent run with `status` (FINISHED, FAILED or KILLED); a resumed worker reopens it."""
    MlflowClient().set_terminated(parent_run_id, status=RunStatus.to_string(status))
