"""End-to-end tests of the harness_optuna sweeper on the toy app (no model, a few seconds per sweep)."""

import json
import time

import pytest
from sweep_app.runner import load_study, mlflow_runs, output_of, prepare_mlflow, read_results, run_toy, states

from harness.trial import RUN_ID_ATTR, open_storage


def sqlite_url(folder) -> str:
    return f"sqlite:///{folder}/optuna.db"


@pytest.fixture
def tmp_path(tmp_path):
    """A fresh folder with an empty MLflow database, so that each sweep skips MLflow's schema set-up."""
    return prepare_mlflow(tmp_path)


def test_tpe_sweep_prunes_and_records_runs(tmp_path):
    result = run_toy(tmp_path, "hydra.sweeper.n_trials=6")
    assert result.returncode == 0, output_of(result)[-3000:]

    study = load_study(sqlite_url(tmp_path))
    counts = states(study)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 6
    assert counts.get("PRUNED", 0) >= 1
    assert sum(counts.values()) == 6

    trials = study.get_trials()
    assert all(RUN_ID_ATTR in trial.user_attrs for trial in trials)
    pruned = [trial for trial in trials if trial.state.name == "PRUNED"]
    assert all(len(trial.intermediate_values) < 4 for trial in pruned)

    runs = mlflow_runs(tmp_path, "toy")
    parents = [run for run in runs if run.data.tags.get("role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["study_name"] == study.study_name
    assert parent.data.tags["sampler"] == "tpe"
    assert parent.data.tags["pruner"] == "median"
    assert set(json.loads(parent.data.tags["search_space"])["params"]) == {"x", "y", "choice"}

    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(run.info.run_id for run in children) == sorted(trial.user_attrs[RUN_ID_ATTR] for trial in trials)
    for trial in trials:
        child = next(run for run in children if run.info.run_id == trial.user_attrs[RUN_ID_ATTR])
        assert child.data.tags["trial_state"] == trial.state.name

    best = study.best_trial
    assert parent.data.tags["best_trial_number"] == str(best.number)
    assert parent.data.tags["best_run_id"] == best.user_attrs[RUN_ID_ATTR]
    assert parent.data.metrics["best.best_val_metric"] == pytest.approx(best.value)
    assert parent.data.metrics["best.delta_best_val_metric"] == pytest.approx(best.value - 0.5)
    assert parent.data.metrics["trials_pruned"] == counts["PRUNED"]

    results = read_results(tmp_path / "multirun")
    assert results["best"]["number"] == best.number
    assert f"x={best.params['x']!r}" in results["best"]["command"]
    assert results["best"]["command"] in result.stdout
    assert "Rerun the best config:" in result.stdout
    assert sorted(path.name for path in (tmp_path / "multirun").iterdir() if path.is_dir()) == [
        str(number) for number in range(6)
    ]


def test_failed_and_nan_trials_fail_and_sweep_finishes(tmp_path):
    result = run_toy(tmp_path, "hydra.sweeper.n_trials=4", "fail_trials=[1]", "nan_trials=[2]", "hydra.sweeper.pruner=null")
    assert result.returncode == 0, output_of(result)[-3000:]

    study = load_study(sqlite_url(tmp_path))
    trials = study.get_trials()
    assert states(study) == {"COMPLETE": 4, "FAIL": 2}
    assert trials[1].state.name == "FAIL"
    assert trials[1].user_attrs["fail_reason"] == "RuntimeError: toy failure in trial 1"
    assert trials[2].state.name == "FAIL"
    assert "best_val_metric=nan is not a finite number" in trials[2].user_attrs["fail_reason"]
    assert "Trial 1 FAIL: RuntimeError: toy failure in trial 1" in output_of(result)


def test_max_failures_stops_sweep(tmp_path):
    result = run_toy(tmp_path, "hydra.sweeper.n_trials=6", "hydra.sweeper.max_failures=2", "fail_trials=[0,1,2,3,4,5]")
    assert result.returncode == 1, output_of(result)[-3000:]
    assert "Stopping this worker: 2 of its trials failed (hydra.sweeper.max_failures=2)" in output_of(result)

    study = load_study(sqlite_url(tmp_path))
    assert states(study) == {"FAIL": 2}
    parent = next(run for run in mlflow_runs(tmp_path, "toy") if run.data.tags.get("role") == "sweep")
    assert parent.info.status == "FAILED"


def test_resume_after_interrupt_runs_remaining_trials(tmp_path):
    first = run_toy(tmp_path, "hydra.sweeper.n_trials=5", "interrupt_trials=[2]", "hydra.sweeper.pruner=null")
    assert first.returncode != 0
    study = load_study(sqlite_url(tmp_path))
    assert states(study) == {"COMPLETE": 2, "FAIL": 1}
    assert "sweeper stopped" in study.get_trials()[2].user_attrs["fail_reason"]

    second = run_toy(tmp_path, "hydra.sweeper.n_trials=5", "interrupt_trials=[2]", "hydra.sweeper.pruner=null")
    assert second.returncode == 0, output_of(second)[-3000:]
    assert states(study) == {"COMPLETE": 5, "FAIL": 1}
    assert output_of(second).count(" COMPLETE: ") == 3
    runs = mlflow_runs(tmp_path, "toy")
    assert len([run for run in runs if run.data.tags.get("role") == "sweep"]) == 1


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
@pytest.mark.parametrize("wait_s", [0, 3], ids=["resume_at_once", "resume_after_grace"])
def test_resume_after_kill_runs_remaining_trials(tmp_path, storage, wait_s):
    # heartbeat_interval=1 and grace_period=2 come from the toy sweep config.
    overrides = ["hydra.sweeper.n_trials=6", "kill_trials=[3]", "hydra.sweeper.pruner=null"]
    if storage == "journal":
        overrides.append("hydra.sweeper.storage=optuna.journal")
    storage_object = open_storage(str(tmp_path / "optuna.journal")) if storage == "journal" else sqlite_url(tmp_path)
    killed = run_toy(tmp_path, *overrides)
    assert killed.returncode == -9, output_of(killed)[-3000:]
    study = load_study(storage_object)
    assert states(study) == {"COMPLETE": 3, "RUNNING": 1}
    killed_params = study.get_trials()[3].params

    # A worker resumed within the grace period waits for the dead trial to go stale; one
    # resumed later finds it stale at once. Either fails it and runs its retry.
    time.sleep(wait_s)
    resumed = run_toy(tmp_path, *overrides)
    assert resumed.returncode == 0, output_of(resumed)[-3000:]

    study = load_study(storage_object)
    trials = study.get_trials()
    assert states(study) == {"COMPLETE": 6, "FAIL": 1}
    assert trials[3].state.name == "FAIL"
    retried = [trial for trial in trials if trial.system_attrs.get("failed_trial") == 3]
    assert len(retried) == 1
    assert retried[0].state.name == "COMPLETE"
    assert retried[0].params == killed_params
    assert output_of(resumed).count(" COMPLETE: ") == 3

    killed_run = next(run for run in mlflow_runs(tmp_path, "toy") if run.info.run_id == trials[3].user_attrs[RUN_ID_ATTR])
    assert killed_run.info.status == "FAILED"
    assert killed_run.data.tags["trial_state"] == "FAIL"


def test_grid_sampler_runs_each_point_once(tmp_path):
    result = run_toy(
        tmp_path,
        "hydra.sweeper.sampler=grid",
        "hydra.sweeper.n_trials=10",
        "hydra.sweeper.pruner=null",
        "x=choice(0.1,0.3)",
        "y=range(6,8)",
    )
    assert result.returncode == 0, output_of(result)[-3000:]
    assert "The grid has 8 points, so the sweep runs 8 trials, not n_trials=10" in output_of(result)

    study = load_study(sqlite_url(tmp_path))
    assert states(study) == {"COMPLETE": 8}
    points = {(trial.params["x"], trial.params["y"], trial.params["choice"]) for trial in study.get_trials()}
    assert len(points) == 8


def test_grid_resume_retries_failed_point(tmp_path):
    grid = ["hydra.sweeper.sampler=grid", "hydra.sweeper.pruner=null", "x=choice(0.1,0.3)", "y=range(6,8)", "fail_trials=[1]"]
    first = run_toy(tmp_path, *grid, "hydra.sweeper.n_trials=4")
    assert first.returncode == 0, output_of(first)[-3000:]
    # The resume has another sampler seed and a larger budget, and the failed point runs again.
    second = run_toy(tmp_path, *grid, "hydra.sweeper.n_trials=8", "hydra.sweeper.seed=5")
    assert second.returncode == 0, output_of(second)[-3000:]

    study = load_study(sqlite_url(tmp_path))
    assert states(study) == {"COMPLETE": 8, "FAIL": 1}
    complete = [trial for trial in study.get_trials() if trial.state.name == "COMPLETE"]
    points = {(trial.params["x"], trial.params["y"], trial.params["choice"]) for trial in complete}
    assert len(points) == 8
    failed = study.get_trials()[1]
    assert (failed.params["x"], failed.params["y"], failed.params["choice"]) in points


def test_nsga2_sweep_reports_pareto_front(tmp_path):
    result = run_toy(
        tmp_path,
        "hydra.sweeper.sampler=nsga2",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.direction=[maximize,minimize]",
        "hydra.sweeper.objectives=[best_val_metric,trainable_params]",
    )
    assert result.returncode == 0, output_of(result)[-3000:]

    study = load_study(sqlite_url(tmp_path))
    assert states(study) == {"COMPLETE": 4}
    results = read_results(tmp_path / "multirun")
    assert sorted(results["pareto_front"]) == sorted(trial.number for trial in study.best_trials)
    assert set(results["best"]["values"]) == {"best_val_metric", "trainable_params"}
    assert "Pareto front: trials" in result.stdout


@pytest.mark.parametrize("sampler, pruner", [("random", "successive_halving"), ("cmaes", "hyperband")])
def test_other_samplers_and_pruners(tmp_path, sampler, pruner):
    result = run_toy(
        tmp_path, f"hydra.sweeper.sampler={sampler}", f"hydra.sweeper.pruner={pruner}", "hydra.sweeper.n_trials=4",
    )
    assert result.returncode == 0, output_of(result)[-3000:]

    study = load_study(sqlite_url(tmp_path))
    counts = states(study)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 4
    assert study.user_attrs["harness_pruner"]["name"] == pruner


def test_tiers_split_points_ascend_within_model(tmp_path):
    from transformers import BertConfig

    model_dir = tmp_path / "model"
    BertConfig(num_hidden_layers=5).save_pretrained(model_dir)
    result = run_toy(
        tmp_path,
        f"model.pretrained={model_dir}",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.pruner=null",
        "+hydra.sweeper.tiers.split={count: 3, low: 1}",
        "+hydra.sweeper.tiers.lrs={low: 1e-5, high: 1e-3, monotone: true}",
    )
    assert result.returncode == 0, output_of(result)[-3000:]

    study = load_study(sqlite_url(tmp_path))
    assert states(study) == {"COMPLETE": 8}
    for trial in study.get_trials():
        split = [trial.params[f"tier.split.{index}"] for index in range(3)]
        lrs = [trial.params[f"tier.lrs.{index}"] for index in range(4)]
        assert split == sorted(set(split)), split
        assert split[0] >= 1, split
        assert split[-1] <= 4, split
        assert lrs == sorted(lrs), lrs
        assert trial.user_attrs[RUN_ID_ATTR]

    best = read_results(tmp_path / "multirun")["best"]
    assert any(override.startswith("tier.split=[") for override in best["overrides"])


def test_bad_split_range_fails_before_any_trial(tmp_path):
    from transformers import BertConfig

    model_dir = tmp_path / "model"
    BertConfig(num_hidden_layers=4).save_pretrained(model_dir)
    result = run_toy(tmp_path, f"model.pretrained={model_dir}", "+hydra.sweeper.tiers.split={count: 4, low: 1}")
    assert result.returncode != 0
    assert "4 strictly ascending split points cannot fit in 1..3 (the model has 4 blocks)" in output_of(result)
    assert not (tmp_path / "optuna.db").exists()


def test_joblib_launcher_runs_batches_in_parallel(tmp_path):
    result = run_toy(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.storage=optuna.journal",
    )
    assert result.returncode == 0, output_of(result)[-3000:]

    study = load_study(open_storage(str(tmp_path / "optuna.journal")))
    counts = states(study)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 4
    assert all(RUN_ID_ATTR in trial.user_attrs for trial in study.get_trials())
    assert "Joblib.Parallel(n_jobs=2" in output_of(result)


def test_submitit_local_launcher_prunes_across_processes(tmp_path):
    # submitit_local runs each job in its own process, as submitit_slurm does on a cluster,
    # so the jobs reach their trials only through the storage.
    result = run_toy(
        tmp_path,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4",
    )
    assert result.returncode == 0, output_of(result)[-3000:]

    study = load_study(sqlite_url(tmp_path))
    counts = states(study)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 4
    assert counts.get("PRUNED", 0) >= 1
    children = [run for run in mlflow_runs(tmp_path, "toy") if "trial_state" in run.data.tags]
    assert sorted(run.data.tags["trial_state"] for run in children) == sorted(trial.state.name for trial in study.get_trials())
