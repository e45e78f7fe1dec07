"""Both analysis notebooks, executed on a tracking database filled by real runs of a tiny model."""

from pathlib import Path

import pytest
from conftest import REPO, tiny_overrides
from test_analysis import run_notebook
from test_run import run_harness

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_runs_root(tiny_model_dir, tiny_task_dir, tmp_path_factory) -> Path:
    """Two tier specs and their baselines over three seeds: 6 layer-wise runs and 3 baselines."""
    root = tmp_path_factory.mktemp("real-runs")
    overrides = [item for item in tiny_overrides(tiny_model_dir, tiny_task_dir, root) if not item.startswith("tier=")]
    result = run_harness(["-m", "tier=two_tier,freeze_bottom", "seed=0,1,2", *overrides], root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.parametrize("name", ["layerwise_vs_full", "sweep_report"])
def test_notebook_on_real_runs(name, real_runs_root, tmp_path, monkeypatch):
    out_dir = tmp_path / "notebook-out"
    env = {
        "HARNESS_TRACKING_URI": f"sqlite:///{real_runs_root}/mlruns.db",
        "HARNESS_EXPERIMENT": "layerwise",
        "HARNESS_OUT_DIR": str(out_dir),
        "HARNESS_N_BOOT": "200",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    run_notebook(name, env, monkeypatch)
    assert any(out_dir.glob("*.png"))
