"""Several sweep workers on one shared storage run exactly n_trials together, each trial once."""

import os
import subprocess
import uuid

import optuna
import pytest
from sweep_app.runner import mlflow_runs, prepare_mlflow, sweep_env, toy_command

from harness.trial import RUN_ID_ATTR, open_storage
from hydra_plugins.harness_optuna_sweeper._budget import OVER_BUDGET_REASON

N_TRIALS = 7
WORKERS = 3


@pytest.fixture(params=["journal", "postgres"])
def storage(request, tmp_path):
    if request.param == "journal":
        return str(tmp_path / "optuna.journal")
    url = os.environ.get("HARNESS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("HARNESS_TEST_POSTGRES_URL is unset; .ci/run starts PostgreSQL and sets it")
    return url


def test_workers_share_budget_exactly(tmp_path, storage):
    prepare_mlflow(tmp_path)
    study_name = f"workers-{uuid.uuid4().hex[:8]}"
    command = toy_command(
        f"hydra.sweeper.storage='{storage}'",
        f"hydra.sweeper.study_name={study_name}",
        f"hydra.sweeper.n_trials={N_TRIALS}",
        # Two trials per batch and three workers make the race for the last trials likely.
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner=null",
        "epoch_sleep_s=0.05",
    )
    workers = [
        subprocess.Popen(command, cwd=tmp_path, env=sweep_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(WORKERS)
    ]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]

    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    try:
        trials = study.get_trials()
        budget_trials = [trial for trial in trials if trial.state.name in ("COMPLETE", "PRUNED")]
        rejected = [trial for trial in trials if trial.state.name == "FAIL"]
        assert len(budget_trials) == N_TRIALS
        assert len(budget_trials) + len(rejected) == len(trials)
        assert all(trial.user_attrs["fail_reason"] == OVER_BUDGET_REASON for trial in rejected)
        assert len({trial.number for trial in trials}) == len(trials)
        assert sum(" COMPLETE: " in line for output in outputs for line in output.splitlines()) == N_TRIALS

        runs = mlflow_runs(tmp_path, "toy")
        parents = [run for run in runs if run.data.tags.get("role") == "sweep"]
        assert len(parents) == 1
        children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        assert sorted(int(run.data.tags["trial_number"]) for run in children) == sorted(trial.number for trial in budget_trials)
        assert {run.info.run_id for run in children} == {trial.user_attrs[RUN_ID_ATTR] for trial in budget_trials}

        folders = sorted(int(path.name) for path in (tmp_path / "multirun").iterdir() if path.is_dir())
        assert folders == sorted(trial.number for trial in budget_trials)
    finally:
        optuna.delete_study(study_name=study_name, storage=open_storage(storage))
