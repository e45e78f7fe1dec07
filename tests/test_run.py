"""End-to-end tests of `python -m harness.run` on a tiny random model and tiny CSVs."""

import os
import subprocess
import sys

import mlflow
import pytest
from conftest import REPO, tiny_overrides, write_task_csvs
from sweep_app.runner import prepare_mlflow

from harness import experiment
from harness.errors import ConfigError

pytestmark = pytest.mark.slow


def run_harness(args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "harness.run", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


def runs_of(root):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns.db")
    experiment_ = client.get_experiment_by_name("layerwise")
    return client, client.search_runs([experiment_.experiment_id])


def test_run_logs_baseline_and_deltas(tiny_model_dir, tiny_task_dir, tmp_path):
    result = run_harness(tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout

    client, runs = runs_of(tmp_path)
    by_role = {run.data.tags["role"]: run for run in runs}
    assert sorted(by_role) == ["baseline", "layerwise"]
    layerwise, baseline = by_role["layerwise"], by_role["baseline"]

    assert layerwise.info.status == "FINISHED"
    assert baseline.info.status == "FINISHED"
    assert layerwise.data.tags["baseline_run_id"] == baseline.info.run_id
    assert layerwise.data.tags["baseline_key"] == baseline.data.tags["baseline_key"]
    assert layerwise.data.tags["strategy"] == "tiers"
    assert layerwise.data.tags["split"] == "2"
    assert baseline.data.tags["strategy"] == "full"
    assert layerwise.data.params["tier.split"] == "2"
    assert layerwise.data.params["train.epochs"] == "2"

    metrics = layerwise.data.metrics
    for name in ("best_val_metric", "test_metric", "delta_best_val_metric", "delta_test_accuracy", "speedup",
                 "trainable_ratio", "trainable_fraction", "drift_depth_0", "drift_depth_5", "train_val_gap",
                 "lr_bottom_start", "lr_top_warmup_end", "lr_top_end", "peak_memory_mb", "train_samples_per_s"):
        assert name in metrics, name
    expected_delta = metrics["best_val_metric"] - baseline.data.metrics["best_val_metric"]
    assert metrics["delta_best_val_metric"] == pytest.approx(expected_delta)
    assert len(client.get_metric_history(layerwise.info.run_id, "val_accuracy")) == 2

    artifacts = {item.path for item in client.list_artifacts(layerwise.info.run_id)}
    assert {"config.yaml", "tier_table.txt", "tier_table.csv", "epochs.csv"} <= artifacts


def test_multirun_one_failing_job(tiny_model_dir, tiny_task_dir, tmp_path):
    overrides = [item for item in tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path) if item != "tier.split=2"]
    result = run_harness(["-m", "tier.split=1,9,3", *overrides], tmp_path)

    assert result.returncode != 0
    assert "tier.split=9" in result.stdout + result.stderr
    failed = (tmp_path / "multirun" / "failed_jobs.txt").read_text()
    assert "tier.split=9" in failed
    assert "tier.split=1" not in failed

    _, runs = runs_of(tmp_path)
    roles = sorted(run.data.tags["role"] for run in runs)
    assert roles == ["baseline", "layerwise", "layerwise"]
    assert all(run.info.status == "FINISHED" for run in runs)
    assert len({run.data.tags["sweep_id"] for run in runs}) == 1


def test_same_metrics_alone_and_in_multirun(tiny_model_dir, tiny_task_dir, tmp_path):
    alone_root, multi_root = tmp_path / "alone", tmp_path / "multi"
    base = [item for item in tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path) if "tracking.root" not in item
            and "tier.split" not in item]
    alone = run_harness([*base, "tier.split=3", f"tracking.root={alone_root}"], tmp_path)
    multi = run_harness(["-m", "tier.split=1,2,3", *base, f"tracking.root={multi_root}"], tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert multi.returncode == 0, multi.stderr[-3000:]

    def metrics_of_split_3(root):
        _, runs = runs_of(root)
        (run,) = [run for run in runs if run.data.tags["split"] == "3"]
        return run.data.metrics

    alone_metrics, multi_metrics = metrics_of_split_3(alone_root), metrics_of_split_3(multi_root)
    for name in ("best_val_loss", "final_val_loss", "test_loss", "drift_mean"):
        assert alone_metrics[name] == multi_metrics[name], name


def test_dry_run_prints_plan_without_runs(tiny_model_dir, tiny_task_dir, tmp_path):
    result = run_harness([*tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path), "dry_run=true"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bottom" in result.stdout
    assert "top" in result.stdout
    assert not (tmp_path / "mlruns.db").exists()


def test_failing_run_marked_failed(tiny_model_dir, tiny_task_dir, tmp_path, compose, monkeypatch):
    from harness import run as run_module

    def explode(*args, **kwargs):
        raise RuntimeError("simulated crash")

    cfg = compose([*tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path), "baseline=off"])
    monkeypatch.setattr(experiment, "train", explode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_module.run_job(cfg)

    _, runs = runs_of(tmp_path)
    (run,) = runs
    assert run.info.status == "FAILED"
    assert "simulated crash" in run.data.tags["error"]


def test_baseline_require_without_baseline(tiny_model_dir, tiny_task_dir, tmp_path, compose):
    from harness import run as run_module

    cfg = compose([*tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path), "baseline=require"])
    with pytest.raises(ConfigError, match="baseline=require"):
        run_module.run_job(cfg)
    _, runs = runs_of(tmp_path)
    assert runs == []


def _bad_task_dir(tmp_path, name, header, rows):
    folder = write_task_csvs(tmp_path / name)
    with open(folder / "train.csv", "w", encoding="utf-8") as handle:
        handle.write(header + "\n" + "".join(row + "\n" for row in rows))
    return folder


BAD_INPUTS = [
    # (overrides or a callable building them from tmp_path, expected message fragment)
    (["task.data_dir=/nonexistent/folder"], "/nonexistent/folder"),
    (lambda tmp: [f"task.data_dir={_bad_task_dir(tmp, 'cols', 'sentence,label', ['good film,1'] * 8)}"], "text"),
    (lambda tmp: [f"task.data_dir={_bad_task_dir(tmp, 'labs', 'text,label', ['good film,yes'] * 8)}"], "label"),
    (lambda tmp: [f"task.data_dir={_bad_task_dir(tmp, 'range', 'text,label', ['good film,7'] * 8)}"], "7"),
    (lambda tmp: [f"task.data_dir={_bad_task_dir(tmp, 'empty', 'text,label', [])}"], "train"),
    (["task.train_size=100000"], "train_size"),
    (["task.train_size=0"], "train_size"),
    (["task.max_length=0"], "max_length"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.batch_size=-4"], "train.batch_size"),
    (["train.epochs=0"], "train.epochs"),
    (["train.warmup_ratio=1.5"], "train.warmup_ratio"),
    (["train.scheduler=sawtooth"], "sawtooth"),
    (["train.device=tpu"], "train.device"),
    (["baseline=sometimes"], "baseline"),
    (["tier.split=9"], "9"),
    (["tier.split=-1"], "-1"),
    (["tier.lrs=[1e-4]"], "lrs"),
    (["tier.lrs=[-1e-4,1e-4]"], "-0.0001"),
    (["tier.strategy=magic"], "magic"),
    (["model.pretrained=no-such-org/no-such-model"], "offline"),
    (["seed=4294967296"], "seed"),
    (["baseline_tier.strategy=llrd", "baseline_tier.decay=0.9"], "baseline_tier.strategy"),
    (["tracking.experiment=''"], "tracking.experiment"),
    (["task.max_length=100"], "positions"),
    (lambda tmp: [f"task.data_dir={_latin1_task_dir(tmp)}"], "UTF-8"),
]


def _latin1_task_dir(tmp_path):
    folder = write_task_csvs(tmp_path / "latin1")
    (folder / "train.csv").write_bytes("text,label\n".encode() + "caf\xe9 cr\xe8me,1\n".encode("latin-1") * 8)
    return folder


@pytest.mark.parametrize("overrides, fragment", BAD_INPUTS)
def test_bad_input_rejected_before_compute(overrides, fragment, tiny_model_dir, tiny_task_dir, tmp_path, compose):
    extra = overrides(tmp_path) if callable(overrides) else overrides
    cfg = compose([*tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path), *extra])
    with pytest.raises(ConfigError, match=None) as caught:
        experiment.prepare(cfg)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("override", ["tracking.root={blocker}/sub", "tracking.uri=sqlite:///{blocker}/x.db"])
def test_tracking_folder_under_a_file(override, tiny_model_dir, tiny_task_dir, tmp_path, compose):
    from harness import tracking

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = compose([*tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path), override.format(blocker=blocker)])
    with pytest.raises(ConfigError, match="not writable") as caught:
        tracking.start_tracking(cfg.tracking)
    assert "tracking.root" in str(caught.value)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(tiny_model_dir, tiny_task_dir, tmp_path, compose):
    cfg = compose([*tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path), "train.device=cuda"])
    with pytest.raises(ConfigError, match="train.device='cuda'"):
        experiment.prepare(cfg)


def test_full_run_at_other_lr_is_layerwise(tiny_model_dir, tiny_task_dir, tmp_path, compose):
    base = [item for item in tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path) if not item.startswith("tier")]
    assert experiment.is_baseline_tier(compose([*base, "tier=full"]))
    assert not experiment.is_baseline_tier(compose([*base, "tier=full", "tier.lr=0.5"]))
    assert not experiment.is_baseline_tier(compose([*base, "tier=two_tier"]))


def test_baseline_key_follows_results(tiny_model_dir, tiny_task_dir, tmp_path, compose):
    from harness.baseline import baseline_key

    base = tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path)
    key = baseline_key(compose(base))
    assert baseline_key(compose([*base, "tier=llrd"])) == key
    assert baseline_key(compose([*base, "train.progress_bar=true"])) == key
    assert baseline_key(compose([*base, "seed=1"])) != key
    assert baseline_key(compose([*base, "train.device=cuda"])) != key
    assert baseline_key(compose([*base, "baseline_tier.lr=1e-3"])) != key
    edited = write_task_csvs(tmp_path / "edited", seed=1)
    assert baseline_key(compose([*base, f"task.data_dir={edited}"])) != key


def test_multirun_start_clears_failed_jobs(tmp_path):
    from omegaconf import OmegaConf

    from harness.run import FAILED_JOBS_FILE, FailedJobsCallback

    (tmp_path / FAILED_JOBS_FILE).write_text("job 0: tier.split=9: ConfigError\n")
    FailedJobsCallback().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert not (tmp_path / FAILED_JOBS_FILE).exists()


def test_sigterm_marks_run_killed(tiny_model_dir, tiny_task_dir, tmp_path):
    import signal
    import time

    args = [*tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path), "baseline=off", "train.epochs=1000"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    # A database with MLflow's schema already in it: polling an empty one would race the
    # run's schema creation.
    prepare_mlflow(tmp_path, experiments=())
    process = subprocess.Popen([sys.executable, "-m", "harness.run", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (tmp_path / "mlruns.db").exists() and runs_running(tmp_path):
                break
            time.sleep(1)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        process.kill()

    _, runs = runs_of(tmp_path)
    (run,) = runs
    assert run.info.status == "KILLED"
    assert "SIGTERM" in run.data.tags["error"]


def runs_running(root) -> bool:
    try:
        _, runs = runs_of(root)
    except Exception:  # the database may still be being created
        return False
    return any(run.info.status == "RUNNING" for run in runs)
