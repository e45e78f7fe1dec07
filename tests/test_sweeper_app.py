"""Sweeps of the real app (`python -m harness.run -m sweep=...`) on the tiny model and task."""

import os
import shlex
import subprocess
import sys
import uuid

import optuna
import pytest
from conftest import tiny_overrides
from sweep_app.runner import mlflow_runs, output_of, prepare_mlflow, read_results, sweep_env

from harness.trial import RUN_ID_ATTR

pytestmark = pytest.mark.slow


def sweep_command(*overrides) -> list[str]:
    return [sys.executable, "-m", "harness.run", "-m", *overrides]


def test_tier_lrs_sweep_links_runs_and_reruns_best(tiny_model_dir, tiny_task_dir, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path)
    result = subprocess.run(
        sweep_command("sweep=tier_lrs", *overrides, "hydra.sweeper.n_trials=2"),
        cwd=tmp_path, env=sweep_env(), capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, output_of(result)[-3000:]

    runs = mlflow_runs(tmp_path, "layerwise")
    parents = [run for run in runs if run.data.tags.get("role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    assert all(run.data.tags["trial_state"] == "COMPLETE" for run in children)
    assert all(run.data.tags["role"] == "layerwise" for run in children)
    assert len([run for run in runs if run.data.tags.get("role") == "baseline"]) == 1

    study = optuna.load_study(study_name=parent.data.tags["study_name"], storage=f"sqlite:///{tmp_path}/optuna.db")
    best = study.best_trial
    best_run = next(run for run in children if run.info.run_id == best.user_attrs[RUN_ID_ATTR])
    assert parent.data.metrics["best.best_val_metric"] == pytest.approx(best.value)
    assert parent.data.metrics["best.delta_best_val_metric"] == pytest.approx(
        best_run.data.metrics["delta_best_val_metric"]
    )
    assert sorted(best.params) == ["tier.lrs.0", "tier.lrs.1"]

    # The printed command reruns the best config as a single run.
    command = read_results(tmp_path / "multirun")["best"]["command"]
    assert command.startswith("python -m harness.run sweep=tier_lrs ")
    rerun = subprocess.run(
        [sys.executable, *shlex.split(command)[1:], "dry_run=true"],
        cwd=tmp_path, env=sweep_env(), capture_output=True, text=True, timeout=600,
    )
    assert rerun.returncode == 0, output_of(rerun)[-3000:]
    assert f"{best.params['tier.lrs.1']:.2e}" in rerun.stdout


@pytest.mark.postgres
def test_postgres_workers_one_child_each(tiny_model_dir, tiny_task_dir, tmp_path):
    url = os.environ.get("HARNESS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("HARNESS_TEST_POSTGRES_URL is unset; .ci/run starts PostgreSQL and sets it")
    prepare_mlflow(tmp_path, experiments=("layerwise",))
    study_name = f"app-workers-{uuid.uuid4().hex[:8]}"
    command = sweep_command(
        "sweep=tier_lrs",
        *tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path),
        "train.epochs=1",
        f"hydra.sweeper.storage='{url}'",
        f"hydra.sweeper.study_name={study_name}",
        "hydra.sweeper.n_trials=3",
    )
    workers = [
        subprocess.Popen(command, cwd=tmp_path, env=sweep_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(3)
    ]
    outputs = [worker.communicate(timeout=900)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]

    study = optuna.load_study(study_name=study_name, storage=url)
    try:
        budget_trials = [trial for trial in study.get_trials() if trial.state.name in ("COMPLETE", "PRUNED")]
        assert len(budget_trials) == 3
        runs = mlflow_runs(tmp_path, "layerwise")
        parents = [run for run in runs if run.data.tags.get("role") == "sweep"]
        assert len(parents) == 1
        children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        assert sorted(run.data.tags["trial_number"] for run in children) == sorted(str(trial.number) for trial in budget_trials)
        assert len([run for run in runs if run.data.tags.get("role") == "baseline"]) == 1
    finally:
        optuna.delete_study(study_name=study_name, storage=url)
