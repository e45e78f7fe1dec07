"""Tests of analysis/: loader, seed statistics, plots, report CLI, confirm command and notebooks.

The runs are written into a real MLflow SQLite database following the run contract in
docs/architecture.md, with metric values chosen so that every statistic can be checked by hand.
"""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import jupytext
import nbclient
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from analysis import compare, confirm, overrides, plots, report
from analysis.load import load_runs
from harness.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "analysis-test"
STUDY = "analysis-study"
TASK, MODEL = "sst2", "tiny-bert"

BASELINE_CONFIG = "full lr=2e-05"
CONFIG_A = "tiers split=2 lrs=1e-05,0.0001"
CONFIG_B = "tiers split=1 lrs=0,0.0001"
CONFIG_C = "tiers split=3 lrs=1e-05,0.001"

# best_val_metric per seed, test_metric = best_val_metric - 0.02.
BASELINE_VALUES = {0: 0.80, 1: 0.82, 2: 0.84}
LAYERWISE = {
    CONFIG_A: {"split": "2", "lrs": {"lower": "1e-05", "upper": "0.0001"}, "values": {0: 0.83, 1: 0.82, 2: 0.88},
               "trainable_params": 600, "train_time_s": 60.0},
    CONFIG_B: {"split": "1", "lrs": {"lower": "None", "upper": "0.0001"}, "values": {0: 0.79, 1: 0.85},
               "trainable_params": 400, "train_time_s": 40.0},
    CONFIG_C: {"split": "3", "lrs": {"lower": "1e-05", "upper": "0.001"}, "values": {0: 0.90, 1: 0.90, 2: 0.90},
               "trainable_params": 800, "train_time_s": 90.0},
}
BASELINE_TRAINABLE, BASELINE_TIME = 1000, 100.0
DEPTHS = 4


def create_run(client, experiment_id, start_time, tags, metrics, params, status="FINISHED"):
    """Create one finished run with the given tags, summary metrics, params and a val_accuracy history."""
    run = client.create_run(experiment_id, start_time=start_time, tags=tags)
    run_id = run.info.run_id

    timestamp = start_time + 1
    batch = [Metric(key, float(value), timestamp, 0) for key, value in metrics.items()]
    if "best_val_metric" in metrics:
        final = metrics["best_val_metric"]
        batch += [Metric("val_accuracy", final - 0.1 * (2 - epoch), timestamp, epoch) for epoch in range(3)]
    client.log_batch(run_id, metrics=batch, params=[Param(key, value) for key, value in params.items()])

    client.set_terminated(run_id, status, end_time=start_time + 1000)
    return run_id


def common_tags(seed, config, role, strategy, split):
    return {
        "model": MODEL, "task": TASK, "strategy": strategy, "split": split, "seed": str(seed),
        "tier_config": config, "role": role, "baseline_key": f"key-{seed}", "metric_name": "accuracy",
        "git_commit": "abc123", "git_dirty": "false",
    }


def summary_metrics(value, trainable, train_time, drift):
    metrics = {
        "best_val_metric": value, "best_val_accuracy": value, "test_metric": value - 0.02,
        "test_accuracy": value - 0.02, "train_time_s": train_time, "trainable_params": trainable,
        "total_params": BASELINE_TRAINABLE, "trainable_fraction": trainable / BASELINE_TRAINABLE,
        "drift_mean": drift,
    }
    metrics.update({f"drift_depth_{depth}": drift * (depth + 1) for depth in range(DEPTHS)})
    return metrics


def config_yaml(spec) -> str:
    """Return a resolved config.yaml with the tier node of a layer-wise config, as the harness logs it."""
    lower = spec["lrs"]["lower"]
    lrs = [0.0 if lower == "None" else float(lower), float(spec["lrs"]["upper"])]
    return (
        "seed: 0\n"
        "tier:\n"
        "  strategy: tiers\n"
        f"  split: {spec['split']}\n"
        f"  lrs: {lrs}\n"
        "  lr: null\n"
        f"  frozen: {'[bottom]' if lower == 'None' else 'null'}\n"
        "  unfreeze: {unit: epoch, every: 1}\n"
        "  names: null\n"
    )


def write_database(root: Path) -> dict:
    """Write the test runs and study under `root`; return URIs and run ids."""
    tracking_uri = f"sqlite:///{root}/mlruns.db"
    storage = f"sqlite:///{root}/optuna.db"
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    clock = iter(range(1_700_000_000_000, 1_800_000_000_000, 10_000))

    parent_tags = {"sweep_id": "sweep-1", "role": "sweep", "study_name": STUDY,
                   "fixed_overrides": f"model=minilm_l6 task=sst2 train.epochs=3 sweep=split_and_lrs"}
    parent_id = client.create_run(experiment_id, start_time=next(clock), tags=parent_tags).info.run_id
    baseline_ids = {}
    for seed, value in BASELINE_VALUES.items():
        baseline_ids[seed] = create_run(
            client, experiment_id, next(clock), common_tags(seed, BASELINE_CONFIG, "baseline", "full", ""),
            summary_metrics(value, BASELINE_TRAINABLE, BASELINE_TIME, 0.05), {"tier_lr.all": "2e-05"},
        )

    layerwise_ids = {}
    for config, spec in LAYERWISE.items():
        for seed, value in spec["values"].items():
            tags = common_tags(seed, config, "layerwise", "tiers", spec["split"])
            tags.update({"baseline_run_id": baseline_ids[seed], "mlflow.parentRunId": parent_id,
                         "sweep_id": "sweep-1", "study_name": STUDY})
            metrics = summary_metrics(value, spec["trainable_params"], spec["train_time_s"], 0.02)
            metrics.update({
                "delta_best_val_metric": value - BASELINE_VALUES[seed],
                "delta_test_metric": value - BASELINE_VALUES[seed],
                "speedup": BASELINE_TIME / spec["train_time_s"],
            })
            params = {f"tier_lr.{name}": lr for name, lr in spec["lrs"].items()}
            run_id = create_run(client, experiment_id, next(clock), tags, metrics, params)
            client.log_text(run_id, config_yaml(spec), "config.yaml")
            layerwise_ids[config, seed] = run_id

    failed_tags = common_tags(3, CONFIG_A, "layerwise", "tiers", "2")
    failed_tags.update({"mlflow.parentRunId": parent_id, "error": "RuntimeError: out of memory"})
    failed_id = create_run(client, experiment_id, next(clock), failed_tags, {}, {}, status="FAILED")
    client.set_terminated(parent_id, "FINISHED")

    write_study(storage, layerwise_ids, parent_id)
    return {
        "tracking_uri": tracking_uri, "storage": storage, "root": root, "parent_id": parent_id,
        "baseline_ids": baseline_ids, "layerwise_ids": layerwise_ids, "failed_id": failed_id,
    }


def write_study(storage: str, layerwise_ids: dict, parent_id: str) -> None:
    """Write one COMPLETE trial per layer-wise run, plus one FAIL trial without a run.

    The params are named as the sweeper names them: `tier.split.<i>` and `tier.lrs.<i>`.
    """
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    study.set_user_attr("mlflow_parent_run_id", parent_id)
    distributions = {
        "tier.split.0": optuna.distributions.IntDistribution(1, 3),
        "tier.lrs.0": optuna.distributions.FloatDistribution(1e-7, 1e-2, log=True),
        "tier.lrs.1": optuna.distributions.FloatDistribution(1e-7, 1e-2, log=True),
    }
    for (config, seed), run_id in layerwise_ids.items():
        spec = LAYERWISE[config]
        lower = spec["lrs"]["lower"]
        params = {"tier.split.0": int(spec["split"]), "tier.lrs.0": 1e-6 if lower == "None" else float(lower),
                  "tier.lrs.1": float(spec["lrs"]["upper"])}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, value=spec["values"][seed],
            user_attrs={"mlflow_run_id": run_id},
        ))
    study.add_trial(optuna.trial.create_trial(
        params={"tier.split.0": 1}, distributions={"tier.split.0": distributions["tier.split.0"]},
        state=optuna.trial.TrialState.FAIL,
    ))


@pytest.fixture(scope="module")
def analysis_db(tmp_path_factory) -> dict:
    """A tracking database and Optuna study with known runs (see the module constants)."""
    return write_database(tmp_path_factory.mktemp("analysis-db"))


@pytest.fixture(scope="module")
def runs(analysis_db) -> pd.DataFrame:
    return load_runs(analysis_db["tracking_uri"], experiment=EXPERIMENT)


# --- loader -----------------------------------------------------------------------------------------------


def test_load_experiment_one_row_per_run(runs, analysis_db):
    # 3 baselines + 8 layer-wise + 1 failed + the sweep parent.
    assert len(runs) == 13
    assert runs["run_id"].is_unique
    assert set(runs["role"].dropna()) == {"baseline", "layerwise", "sweep"}
    assert runs.loc[runs["run_id"] == analysis_db["failed_id"], "status"].item() == "FAILED"
    assert runs.loc[runs["run_id"] == analysis_db["failed_id"], "error"].item() == "RuntimeError: out of memory"


def test_load_columns_follow_contract(runs, analysis_db):
    for column in ("run_id", "model", "task", "strategy", "split", "tier_config", "seed", "status", "role",
                   "baseline_run_id", "best_val_metric", "test_metric", "delta_best_val_metric",
                   "train_time_s", "trainable_fraction", "drift_mean", "drift_max", "tier_lr.lower",
                   "tier_lr.upper", "drift_depth_3", "parent_run_id"):
        assert column in runs.columns, column
    assert str(runs["seed"].dtype) == "Int64"

    run = runs.set_index("run_id").loc[analysis_db["layerwise_ids"][CONFIG_A, 2]]
    assert run["best_val_metric"] == pytest.approx(0.88)
    assert run["delta_best_val_metric"] == pytest.approx(0.88 - 0.84)
    assert run["tier_lr.upper"] == pytest.approx(1e-4)
    assert run["drift_max"] == pytest.approx(0.02 * DEPTHS)
    assert run["baseline_run_id"] == analysis_db["baseline_ids"][2]
    assert run["parent_run_id"] == analysis_db["parent_id"]


def test_load_frozen_tier_lr_is_nan(runs):
    frozen = runs[runs["tier_config"] == CONFIG_B]
    assert frozen["tier_lr.lower"].isna().all()


def test_load_sweep_adds_baselines(analysis_db):
    sweep = load_runs(analysis_db["tracking_uri"], parent_run_id=analysis_db["parent_id"])
    # 9 children (8 layer-wise + failed) and the 3 baselines they link to.
    assert len(sweep) == 12
    assert set(sweep.loc[sweep["role"] == "baseline", "run_id"]) == set(analysis_db["baseline_ids"].values())


def test_load_sweep_without_baselines(analysis_db):
    sweep = load_runs(analysis_db["tracking_uri"], parent_run_id=analysis_db["parent_id"], include_baselines=False)
    assert len(sweep) == 9
    assert (sweep["parent_run_id"] == analysis_db["parent_id"]).all()


def test_load_study_links_trials(analysis_db):
    study_runs = load_runs(analysis_db["tracking_uri"], study_name=STUDY, storage=analysis_db["storage"])
    layerwise = study_runs[study_runs["role"] == "layerwise"]
    assert len(layerwise) == 8
    assert len(study_runs) == 11
    assert (layerwise["trial_state"] == "COMPLETE").all()
    assert list(layerwise["trial_value"]) == pytest.approx(list(layerwise["best_val_metric"]))
    assert sorted(layerwise["trial_number"]) == list(range(8))


@pytest.mark.parametrize("kwargs, fragment", [
    ({}, "exactly one"),
    ({"experiment": "missing-experiment"}, "missing-experiment"),
    ({"parent_run_id": "0" * 32}, "0" * 32),
    ({"study_name": STUDY}, "storage"),
])
def test_load_invalid_source_raises(analysis_db, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_runs(analysis_db["tracking_uri"], **kwargs)


def test_load_missing_sqlite_file_raises(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_runs(f"sqlite:///{tmp_path}/missing.db", experiment=EXPERIMENT)
    assert not (tmp_path / "missing.db").exists()


def test_load_missing_study_raises(analysis_db):
    with pytest.raises(ConfigError, match="no-such-study"):
        load_runs(analysis_db["tracking_uri"], study_name="no-such-study", storage=analysis_db["storage"])


# --- statistics -------------------------------------------------------------------------------------------


def test_bootstrap_ci_of_constant():
    assert compare.bootstrap_ci([0.9, 0.9, 0.9]) == pytest.approx((0.9, 0.9))


def test_bootstrap_ci_matches_documented_algorithm():
    values = np.array([0.83, 0.82, 0.88])
    rng = np.random.default_rng(7)
    means = values[rng.integers(0, 3, size=(2000, 3))].mean(axis=1)
    expected = np.quantile(means, [0.05, 0.95])

    low, high = compare.bootstrap_ci(values, n_boot=2000, confidence=0.9, seed=7)
    assert (low, high) == pytest.approx(tuple(expected))
    assert values.min() <= low <= values.mean()
    assert values.mean() <= high <= values.max()


def test_bootstrap_ci_is_reproducible():
    values = [0.1, 0.5, 0.2, 0.9]
    assert compare.bootstrap_ci(values, seed=3) == compare.bootstrap_ci(values, seed=3)


def test_bootstrap_ci_empty_is_nan():
    assert np.isnan(compare.bootstrap_ci([])).all()


def test_summarize_mean_std_ci(runs):
    summary = compare.summarize(runs, n_boot=2000).set_index("tier_config")
    assert len(summary) == 4

    baseline = summary.loc[BASELINE_CONFIG]
    assert baseline["role"] == "baseline"
    assert baseline["n_seeds"] == 3
    assert baseline["mean"] == pytest.approx(0.82)
    assert baseline["std"] == pytest.approx(0.02)
    assert baseline["ci_low"] <= baseline["mean"]
    assert baseline["mean"] <= baseline["ci_high"]
    assert baseline["ci_low"] >= 0.80
    assert baseline["ci_high"] <= 0.84

    config_a = summary.loc[CONFIG_A]
    assert config_a["mean"] == pytest.approx((0.83 + 0.82 + 0.88) / 3)
    assert config_a["std"] == pytest.approx(np.std([0.83, 0.82, 0.88], ddof=1))
    assert not config_a["underpowered"]

    config_c = summary.loc[CONFIG_C]
    assert (config_c["ci_low"], config_c["ci_high"]) == pytest.approx((0.90, 0.90))


def test_summarize_flags_underpowered(runs):
    summary = compare.summarize(runs).set_index("tier_config")
    assert summary.loc[CONFIG_B, "n_seeds"] == 2
    assert summary.loc[CONFIG_B, "underpowered"]
    assert not summary.loc[BASELINE_CONFIG, "underpowered"]


def test_summarize_skips_failed_runs(runs):
    summary = compare.summarize(runs).set_index("tier_config")
    # The FAILED seed-3 run of config A has no metrics and does not count.
    assert summary.loc[CONFIG_A, "n_seeds"] == 3


def test_summarize_averages_duplicate_seeds(runs):
    duplicate = runs[(runs["tier_config"] == CONFIG_C) & (runs["seed"] == 0)].assign(
        run_id="duplicate", best_val_metric=0.80)
    summary = compare.summarize(pd.concat([runs, duplicate]), n_boot=500).set_index("tier_config")
    assert summary.loc[CONFIG_C, "n_seeds"] == 3
    assert summary.loc[CONFIG_C, "mean"] == pytest.approx((0.85 + 0.90 + 0.90) / 3)


def test_summarize_unknown_metric_raises(runs):
    with pytest.raises(ConfigError, match="no_such_metric"):
        compare.summarize(runs, "no_such_metric")


def test_paired_diffs_are_run_minus_baseline(runs, analysis_db):
    pairs = compare.pair_with_baselines(runs).set_index("run_id")
    assert len(pairs) == 8
    for (config, seed), run_id in analysis_db["layerwise_ids"].items():
        expected = LAYERWISE[config]["values"][seed] - BASELINE_VALUES[seed]
        assert pairs.loc[run_id, "diff"] == pytest.approx(expected)
        assert pairs.loc[run_id, "baseline_run_id"] == analysis_db["baseline_ids"][seed]


def test_paired_falls_back_to_baseline_key(runs, analysis_db):
    unlinked = runs.assign(baseline_run_id=None)
    pairs = compare.pair_with_baselines(unlinked).set_index("run_id")
    run_id = analysis_db["layerwise_ids"][CONFIG_A, 1]
    assert pairs.loc[run_id, "baseline_run_id"] == analysis_db["baseline_ids"][1]
    assert pairs.loc[run_id, "diff"] == pytest.approx(0.0)


def test_compare_to_baseline_by_hand(runs):
    paired = compare.compare_to_baseline(runs, n_boot=2000).set_index("tier_config")
    assert set(paired.index) == {CONFIG_A, CONFIG_B, CONFIG_C}

    config_a = paired.loc[CONFIG_A]
    diffs = [0.03, 0.0, 0.04]
    assert config_a["n_pairs"] == 3
    assert config_a["mean_diff"] == pytest.approx(np.mean(diffs))
    assert config_a["std_diff"] == pytest.approx(np.std(diffs, ddof=1))
    assert config_a["baseline_mean"] == pytest.approx(0.82)
    # The seed-1 tie is not a win.
    assert config_a["win_rate"] == pytest.approx(2 / 3)
    assert config_a["diff_ci_low"] <= config_a["mean_diff"]
    assert config_a["mean_diff"] <= config_a["diff_ci_high"]
    assert config_a["diff_ci_low"] >= 0.0
    assert config_a["diff_ci_high"] <= 0.04 + 1e-12

    config_b = paired.loc[CONFIG_B]
    assert config_b["mean_diff"] == pytest.approx(np.mean([-0.01, 0.03]))
    assert config_b["win_rate"] == pytest.approx(0.5)
    assert config_b["underpowered"]

    config_c = paired.loc[CONFIG_C]
    assert config_c["win_rate"] == pytest.approx(1.0)
    assert not config_c["underpowered"]


def test_compare_paired_ci_of_equal_diffs(runs):
    shifted = runs.copy()
    is_c = shifted["tier_config"] == CONFIG_C
    shifted.loc[is_c, "best_val_metric"] = shifted.loc[is_c, "seed"].map(
        lambda seed: BASELINE_VALUES[seed] + 0.05).astype(float)
    config_c = compare.compare_to_baseline(shifted).set_index("tier_config").loc[CONFIG_C]
    assert (config_c["diff_ci_low"], config_c["diff_ci_high"]) == pytest.approx((0.05, 0.05))


def test_compare_minimize_flips_win_rate(runs):
    paired = compare.compare_to_baseline(runs, maximize=False).set_index("tier_config")
    assert paired.loc[CONFIG_A, "win_rate"] == pytest.approx(0.0)
    assert paired.loc[CONFIG_B, "win_rate"] == pytest.approx(0.5)


def test_comparison_table_order_and_flags(runs):
    table = compare.comparison_table(runs, n_boot=500)
    assert list(table["tier_config"]) == [BASELINE_CONFIG, CONFIG_C, CONFIG_A, CONFIG_B]
    assert list(table["underpowered"]) == [False, False, False, True]
    assert np.isnan(table.loc[0, "mean_diff"])
    assert table.loc[1, "mean_diff"] == pytest.approx(np.mean([0.10, 0.08, 0.06]))


def test_pareto_front_by_trainable_params(runs, analysis_db):
    finished = compare.finished_runs(runs, "best_val_metric")
    front = compare.pareto_front(finished, "best_val_metric", "trainable_params")
    on_front = set(finished.loc[front, "run_id"])
    ids = analysis_db["layerwise_ids"]
    expected = {ids[CONFIG_B, 1], ids[CONFIG_A, 2], ids[CONFIG_C, 0], ids[CONFIG_C, 1], ids[CONFIG_C, 2]}
    assert on_front == expected


# --- plots ------------------------------------------------------------------------------------------------


def test_make_plots_writes_every_plot(runs, analysis_db, tmp_path):
    client = MlflowClient(analysis_db["tracking_uri"])
    study = optuna.load_study(study_name=STUDY, storage=analysis_db["storage"])
    outputs = plots.make_plots(runs, tmp_path, client=client, study=study, n_boot=200)

    assert [output.name for output in outputs] == [
        "metric_vs_split", "tier_lrs", "pareto", "drift", "learning_curves", "param_importances"]
    for output in outputs:
        assert output.path is not None, f"{output.name}: {output.note}"
        assert output.path.stat().st_size > 1000, output.name
        assert output.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", output.name


def test_make_plots_skips_with_notes(runs, tmp_path):
    outputs = {output.name: output for output in plots.make_plots(runs, tmp_path, n_boot=200)}
    assert outputs["learning_curves"].path is None
    assert "client" in outputs["learning_curves"].note
    assert outputs["param_importances"].path is None
    assert "study" in outputs["param_importances"].note


def test_param_importances_need_two_trials(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"x": 0.5}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)}, value=1.0))
    with pytest.raises(plots.PlotSkipped, match="1 COMPLETE trials"):
        plots.plot_param_importances(study, tmp_path / "importances.png")


def test_plots_skip_failed_only_runs(runs, tmp_path):
    failed = runs[runs["status"] == "FAILED"].dropna(axis=1, how="all")
    outputs = plots.make_plots(failed, tmp_path, n_boot=200)
    assert all(output.path is None for output in outputs)
    assert all(output.note for output in outputs)


def test_log_plots_to_parent_run(runs, analysis_db, tmp_path):
    client = MlflowClient(analysis_db["tracking_uri"])
    outputs = plots.make_plots(runs, tmp_path, n_boot=200)
    plots.log_plots(client, analysis_db["parent_id"], outputs)

    logged = {Path(item.path).name for item in client.list_artifacts(analysis_db["parent_id"], "analysis")}
    assert logged == {output.path.name for output in outputs if output.path is not None}


# --- report CLI -------------------------------------------------------------------------------------------


def run_module(module, args, cwd=REPO_ROOT, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_report_cli_study(analysis_db, tmp_path):
    out = tmp_path / "report"
    result = run_module("analysis.report", [
        "--tracking-uri", analysis_db["tracking_uri"], "--study", STUDY, "--storage", analysis_db["storage"],
        "--out", str(out), "--n-boot", "500",
    ])
    assert result.returncode == 0, result.stderr[-3000:]

    text = (out / "report.md").read_text()
    assert "## best_val_metric by config" in text
    assert "## test_metric by config" in text
    assert CONFIG_A in text
    assert "![Optuna parameter importances](param_importances.png)" in text
    for name in ("metric_vs_split", "tier_lrs", "pareto", "drift", "learning_curves", "param_importances"):
        assert (out / f"{name}.png").stat().st_size > 1000, name
    comparison = pd.read_csv(out / "comparison_best_val_metric.csv")
    assert len(comparison) == 4


def test_report_main_parent_run_logs_artifacts(analysis_db, tmp_path):
    out = tmp_path / "report"
    status = report.main(["--tracking-uri", analysis_db["tracking_uri"], "--parent-run", analysis_db["parent_id"],
                          "--out", str(out), "--n-boot", "200"])
    assert status == 0

    text = (out / "report.md").read_text()
    assert "### Failed runs" in text
    assert "RuntimeError: out of memory" in text
    assert "_Skipped: no Optuna study was given._" in text

    client = MlflowClient(analysis_db["tracking_uri"])
    logged = {Path(item.path).name for item in client.list_artifacts(analysis_db["parent_id"], "analysis")}
    assert {"report.md", "metric_vs_split.png", "learning_curves.png"} <= logged


@pytest.mark.parametrize("args, fragment", [
    (["--experiment", "missing-experiment"], "missing-experiment"),
    (["--experiment", EXPERIMENT, "--n-boot", "0"], "--n-boot=0"),
    (["--study", STUDY], "storage"),
    (["--experiment", EXPERIMENT, "--metric", "no_such_metric"], "no_such_metric"),
])
def test_report_main_invalid_input(analysis_db, tmp_path, capsys, args, fragment):
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--tracking-uri", analysis_db["tracking_uri"], "--out", str(tmp_path), *args])
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


# --- confirm ----------------------------------------------------------------------------------------------


def test_top_trials_distinct_best_first(analysis_db):
    study = optuna.load_study(study_name=STUDY, storage=analysis_db["storage"])
    trials = confirm.top_trials(study, 3)
    # Config C's three trials share params, so the next distinct configs are A (0.88) and B (0.85).
    assert [trial.value for trial in trials] == pytest.approx([0.90, 0.88, 0.85])
    assert [trial.params["tier.split.0"] for trial in trials] == [3, 2, 1]


def test_top_trials_invalid_objective(analysis_db):
    study = optuna.load_study(study_name=STUDY, storage=analysis_db["storage"])
    with pytest.raises(ConfigError, match="--objective=1"):
        confirm.top_trials(study, 3, objective=1)


@pytest.mark.parametrize("value, expected", [
    (3, "tier.split=3"),
    (1e-05, "tier.lr=1e-05"),
    (True, "flag=true"),
    (None, "tier.names=null"),
    ([2, 4], "tier.split=[2,4]"),
    ({"unit": "epoch", "every": 1}, "tier.unfreeze={unit:epoch,every:1}"),
    ("6,10", "tier.split='6,10'"),
    ("[6,10]", "tier.split=[6,10]"),
    ("it's a=b", "name='it\\'s a=b'"),
])
def test_format_override(value, expected):
    key = expected.split("=", 1)[0]
    assert overrides.format_override(key, value) == expected


def test_trial_overrides_join_split_and_lrs():
    params = {"tier.lrs.1": 1e-4, "tier.lrs.0": 2e-5, "tier.lrs.2": 3e-4, "tier.split.1": 4, "tier.split.0": 2,
              "train.warmup_ratio": 0.1}
    assert overrides.trial_overrides(params) == [
        "train.warmup_ratio=0.1", "tier.lrs=[2e-05,0.0001,0.0003]", "tier.split=[2,4]"]


def test_merge_overrides_later_wins():
    merged = overrides.merge_overrides(["task=sst2", "tier.split=4"], ["tier.split=[2]"], ["+extra=1", "task=trec"])
    assert merged == ["tier.split=[2]", "+extra=1", "task=trec"]


def test_tier_overrides_from_config_yaml(analysis_db):
    client = MlflowClient(analysis_db["tracking_uri"])
    pinned = overrides.tier_overrides(client, analysis_db["layerwise_ids"][CONFIG_B, 0])
    assert pinned == [
        "tier.strategy=tiers", "tier.split=1", "tier.lrs=[0.0,0.0001]", "tier.lr=null", "tier.frozen=[bottom]",
        "tier.unfreeze={unit:epoch,every:1}", "tier.names=null",
    ]


def test_tier_overrides_without_config_yaml(analysis_db):
    client = MlflowClient(analysis_db["tracking_uri"])
    assert overrides.tier_overrides(client, analysis_db["baseline_ids"][0]) == []
    assert overrides.tier_overrides(client, None) == []


def test_sweep_fixed_overrides_drop_sweep(analysis_db):
    client = MlflowClient(analysis_db["tracking_uri"])
    study = optuna.load_study(study_name=STUDY, storage=analysis_db["storage"])
    assert overrides.sweep_fixed_overrides(client, study) == ["model=minilm_l6", "task=sst2", "train.epochs=3"]


def test_confirm_dry_run_prints_commands(analysis_db, tmp_path):
    result = run_module("analysis.confirm", [
        "--study", STUDY, "--storage", analysis_db["storage"], "--top-k", "2", "--seeds", "5", "--dry-run",
        "--tracking-uri", analysis_db["tracking_uri"], "--sweep-dir", str(tmp_path / "sweeps"),
        "--experiment", "confirm", "train.epochs=1",
    ], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    best = shlex.split(lines[0])
    assert best[1:5] == ["-m", "harness.run", "-m", "seed=0,1,2,3,4"]
    assert f"hydra.sweep.dir={tmp_path / 'sweeps' / 'trial-5'}" in best
    assert f"tracking.uri={analysis_db['tracking_uri']}" in best
    assert "tracking.experiment=confirm" in best
    # Fixed overrides of the sweep, without sweep=..., and the positional override replacing train.epochs=3.
    assert {"model=minilm_l6", "task=sst2", "train.epochs=1"} <= set(best)
    assert not any(item.startswith(("sweep=", "train.epochs=3")) for item in best)
    # The tier spec pinned from config.yaml, then the trial params joined into lists.
    assert {"tier.strategy=tiers", "tier.frozen=null", "tier.split=[3]", "tier.lrs=[1e-05,0.001]"} <= set(best)
    assert not any(item == "tier.split=3" for item in best)
    assert "tier.split=[2]" in shlex.split(lines[1])
    assert not (tmp_path / "sweeps").exists()


def test_confirm_dry_run_without_store(analysis_db, tmp_path):
    result = run_module("analysis.confirm", ["--study", STUDY, "--storage", analysis_db["storage"], "--top-k", "1",
                                             "--dry-run", "model=minilm_l6"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Not reading the sweep's runs" in result.stderr

    command = shlex.split(result.stdout.strip())
    assert "model=minilm_l6" in command
    assert "tier.split=[3]" in command
    assert not any(item.startswith("tier.strategy=") for item in command)
    assert not (tmp_path / "mlruns.db").exists()


@pytest.mark.parametrize("override, fragment", [
    ("seed=3", "--seeds"),
    ("tier.split=[4]", "which the study's trials set"),
    ("task", "key=value"),
])
def test_confirm_rejects_overrides(analysis_db, capsys, override, fragment):
    with pytest.raises(SystemExit) as exit_info:
        confirm.main(["--study", STUDY, "--storage", analysis_db["storage"], "--dry-run", override])
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.slow
def test_confirm_reruns_best_sweep_trial(tmp_path, tiny_model_dir, tiny_task_dir):
    from conftest import tiny_overrides

    base = [item for item in tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path)
            if overrides.override_key(item) not in ("tier", "tier.split", "train.epochs")]
    sweep = run_module("harness.run", [
        "-m", "sweep=split_and_lrs", "hydra.sweeper.n_trials=1", "hydra.sweeper.tiers.split.count=1",
        "hydra.sweeper.study_name=tiny", "train.epochs=1", *base,
    ], cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-5000:]

    tracking_uri = f"sqlite:///{tmp_path}/mlruns.db"
    swept = load_runs(tracking_uri, study_name="tiny", storage=f"sqlite:///{tmp_path}/optuna.db")
    best = swept[swept["role"] == "layerwise"].iloc[0]

    result = run_module("analysis.confirm", [
        "--study", "tiny", "--storage", f"sqlite:///{tmp_path}/optuna.db", "--top-k", "1", "--seeds", "2",
        "--n-boot", "200", "--sweep-dir", str(tmp_path / "confirm"), "--out", str(tmp_path / "report"),
    ], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    assert best["tier_config"] in result.stdout

    runs = load_runs(tracking_uri, experiment="layerwise")
    reruns = runs[runs["sweep_id"] == str(tmp_path / "confirm" / f"trial-{best['trial_number']}")]
    layerwise = reruns[reruns["role"] == "layerwise"]
    assert sorted(layerwise["seed"]) == [0, 1]
    assert set(layerwise["tier_config"]) == {best["tier_config"]}
    # Seed 0 reuses the sweep's baseline, and seed 1 gets a new one.
    assert layerwise.loc[layerwise["seed"] == 0, "baseline_run_id"].item() == best["baseline_run_id"]
    assert list(reruns.loc[reruns["role"] == "baseline", "seed"]) == [1]
    assert (tmp_path / "report" / "report.md").exists()


# --- notebooks --------------------------------------------------------------------------------------------


def run_notebook(name: str, env: dict[str, str], monkeypatch) -> None:
    """Convert analysis/notebooks/<name>.py with jupytext and execute it top to bottom with nbclient."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = jupytext.read(REPO_ROOT / "analysis" / "notebooks" / f"{name}.py")
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO_ROOT)}})
    client.execute()


@pytest.fixture
def notebook_env(analysis_db, tmp_path) -> dict[str, str]:
    """Environment that points both notebooks at the test database; reusable with another database."""
    return {
        "HARNESS_TRACKING_URI": analysis_db["tracking_uri"],
        "HARNESS_EXPERIMENT": EXPERIMENT,
        "HARNESS_STUDY": STUDY,
        "HARNESS_STORAGE": analysis_db["storage"],
        "HARNESS_OUT_DIR": str(tmp_path / "notebook-out"),
        "HARNESS_N_BOOT": "200",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }


@pytest.mark.parametrize("name", ["layerwise_vs_full", "sweep_report"])
def test_notebook_executes(name, notebook_env, monkeypatch):
    run_notebook(name, notebook_env, monkeypatch)
    assert any(Path(notebook_env["HARNESS_OUT_DIR"]).glob("*.png"))


def test_t_interval_by_hand():
    # mean 0.02, std 0.01 (ddof=1), n=3: half width = t(0.975, 2) * 0.01 / sqrt(3) = 4.302653 * 0.0057735.
    low, high = compare.t_interval([0.01, 0.02, 0.03])
    half_width = 4.302652729911275 * 0.01 / 3 ** 0.5
    assert low == pytest.approx(0.02 - half_width)
    assert high == pytest.approx(0.02 + half_width)


def test_t_interval_wider_than_bootstrap_for_three_seeds():
    values = [0.01, 0.02, 0.03]
    t_low, t_high = compare.t_interval(values)
    boot_low, boot_high = compare.bootstrap_ci(values, n_boot=2000)
    assert t_low < boot_low
    assert t_high > boot_high


@pytest.mark.parametrize("item, dropped", [
    ("seed=0", True),
    ("sweep=tier_lrs", True),
    ("hydra.sweeper.n_trials=6", True),
    ("optuna_trial.number=3", True),
    ("task.train_size=2000", False),
    ("train.epochs=1", False),
])
def test_fixed_overrides_drop_sweep_only_keys(item, dropped):
    # A kept `seed=0` would override the rerun's `-m seed=0,1,2`: Hydra keeps the last value.
    assert bool(overrides.SWEEP_ONLY_KEYS.fullmatch(overrides.override_key(item))) == dropped
