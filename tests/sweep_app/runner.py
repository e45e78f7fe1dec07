"""Helpers for the sweeper tests: run the toy app or harness.run as a sweep, read its study and runs."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import optuna
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
TOY_APP = Path(__file__).resolve().parent / "toy_app.py"
RESULTS_FILE = "optimization_results.yaml"
_MLFLOW_TEMPLATE = []


def prepare_mlflow(folder: Path, experiments=("toy",)) -> Path:
    """Copy an MLflow database with the given experiments into `folder` and return `folder`.

    Creating MLflow's SQLite schema takes seconds per sweep, so the tests create it once and
    copy it. Workers that start together would also race to create the experiment.
    """
    if not _MLFLOW_TEMPLATE:
        template = Path(tempfile.mkdtemp(prefix="mlflow-template-")) / "mlruns.db"
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{template}")
        client.search_experiments()
        _MLFLOW_TEMPLATE.append(template)
    target = folder / "mlruns.db"
    shutil.copy(_MLFLOW_TEMPLATE[0], target)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{target}")
    for name in experiments:
        client.create_experiment(name, artifact_location=(folder / "mlartifacts").as_uri())
    return folder


def sweep_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def toy_command(*overrides, sweep="toy") -> list[str]:
    return [sys.executable, str(TOY_APP), "-m", f"sweep={sweep}", *overrides]


def run_toy(cwd: Path, *overrides, sweep="toy", timeout=300) -> subprocess.CompletedProcess:
    """Run a toy sweep in `cwd` (its MLflow store, optuna.db and multirun/ land there)."""
    return subprocess.run(
        toy_command(*overrides, sweep=sweep), cwd=cwd, env=sweep_env(), capture_output=True, text=True, timeout=timeout,
    )


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def load_study(storage, study_name: str | None = None) -> optuna.Study:
    """Load the study from a storage URL or object; without a name, the only study in the storage."""
    if study_name is None:
        names = optuna.get_all_study_names(storage)
        assert len(names) == 1, names
        study_name = names[0]
    return optuna.load_study(study_name=study_name, storage=storage)


def read_results(sweep_dir: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(sweep_dir / RESULTS_FILE))


def mlflow_runs(root: Path, experiment: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns.db")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000)


def states(study) -> dict:
    """Count the study's trials by state name."""
    counts = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts
