"""MLflow tracking helpers: password masking, config flattening, the experiment creation race, server checks."""

import socket

import mlflow
import pytest
from omegaconf import OmegaConf

from harness import tracking
from harness.errors import ConfigError


@pytest.mark.parametrize("text, expected", [
    ("postgresql+psycopg://harness:secret@127.0.0.1:5432/db", "postgresql+psycopg://harness:***@127.0.0.1:5432/db"),
    ("http://user:p4ss@127.0.0.1:5000", "http://user:***@127.0.0.1:5000"),
    ("sqlite:////tmp/mlruns.db", "sqlite:////tmp/mlruns.db"),
    ("optuna.journal", "optuna.journal"),
])
def test_mask_passwords(text, expected):
    assert tracking.mask_passwords(text) == expected


def test_flatten_config_masks_storage_password():
    cfg = OmegaConf.create({"optuna_trial": {"storage": "mysql://root:hunter2@127.0.0.1/optuna"}, "seed": 0})
    flat = tracking.flatten_config(cfg)
    assert flat["optuna_trial.storage"] == "mysql://root:***@127.0.0.1/optuna"
    assert flat["seed"] == "0"


def test_start_tracking_loses_creation_race(tmp_path, monkeypatch):
    cfg = OmegaConf.create({"uri": None, "root": str(tmp_path), "experiment": "raced"})
    real_create = mlflow.create_experiment

    def create_then_fail(name, artifact_location=None):
        # Another worker creates the experiment first; this call then fails as MLflow's would.
        real_create(name, artifact_location=artifact_location)
        raise mlflow.exceptions.MlflowException(f"Experiment '{name}' already exists.")

    monkeypatch.setattr(mlflow, "create_experiment", create_then_fail)
    experiment_id = tracking.start_tracking(cfg)
    assert mlflow.get_experiment(experiment_id).name == "raced"


def test_start_tracking_rejects_unreachable_server():
    # Binding port 0 picks a free port, and closing the socket leaves nothing listening there.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = OmegaConf.create({"uri": f"http://user:secret@127.0.0.1:{port}", "root": "unused", "experiment": "x"})
    with pytest.raises(ConfigError, match="is unreachable") as error:
        tracking.start_tracking(cfg)
    assert "secret" not in str(error.value)
    assert "tracking.uri=null" in str(error.value)
