"""Settings of the `harness_optuna` sweeper, and the `sweep` config group read from `sweeps/*.yaml`.

Hydra imports every public module under `hydra_plugins` at start-up, so this module
registers both config nodes in Hydra's ConfigStore and imports nothing heavy.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

# The repository's sweeps/ folder: one search space per file, used as `sweep=<file stem>`.
# NOTE: a non-editable install has no sweeps/ folder here, so `sweep=` then finds only the
# configs in a `sweep/` folder of the config search path (conf/sweep/ or --config-dir).
SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"


@dataclass
class HarnessOptunaSweeperConf:
    _target_: str = "hydra_plugins.harness_optuna_sweeper.sweeper.HarnessOptunaSweeper"

    # Global budget of the study: the number of COMPLETE, PRUNED, RUNNING and WAITING trials.
    # FAIL trials do not count, so a failed trial is replaced (up to max_failures per worker).
    n_trials: int = 20
    # Trials asked and launched together in one launcher batch: set it to the launcher's
    # parallelism (hydra.launcher.n_jobs for joblib, the array size for submitit).
    n_jobs: int = 1
    # `maximize` or `minimize`, or one per objective for a multi-objective study.
    direction: Any = "maximize"
    # Keys of the summary dict that the task function returns, one per direction.
    objectives: List[str] = field(default_factory=lambda: ["best_val_metric"])

    # null: the SQLite file optuna.db next to the MLflow database (tracking.root). Otherwise any
    # Optuna RDB URL (sqlite:///..., postgresql+psycopg://..., mysql+pymysql://...) or a journal
    # file path such as optuna.journal. Relative paths are taken from the launch directory.
    storage: Optional[str] = None
    # null: `<sweep config name>-<hash of the fixed overrides, search space, objectives and
    # directions>`, so that rerunning the same command resumes the same study.
    study_name: Optional[str] = None

    # tpe, random, grid, cmaes or nsga2.
    sampler: str = "tpe"
    # Keyword arguments per sampler name, e.g. {tpe: {n_startup_trials: 5}}.
    sampler_options: Dict[str, Any] = field(default_factory=dict)
    # median, successive_halving, hyperband, or null for no pruning.
    pruner: Optional[str] = "median"
    # Keyword arguments per pruner name, e.g. {median: {n_startup_trials: 3, n_warmup_steps: 1}}.
    pruner_options: Dict[str, Any] = field(default_factory=dict)
    # Sampler seed. A worker adds the number of trials already in the study, so a resumed
    # sweep does not replay the proposals of its first run.
    seed: int = 0

    # Stop this worker after this many of its trials failed; null: never stop.
    max_failures: Optional[int] = 5
    # Each worker records a heartbeat for its running trials every heartbeat_interval
    # seconds. A trial without one for grace_period seconds (null: 2 * heartbeat_interval)
    # becomes FAIL and is queued once more with the same params.
    heartbeat_interval: int = 60
    grace_period: Optional[int] = None

    # Search space: config key -> Hydra sweep syntax, e.g. `tag(log, interval(1e-5, 1e-3))`,
    # `interval(0.0, 0.1)`, `int(interval(1, 4))`, `range(1, 5)`, `choice(16, 32)`.
    # A plain value is a fixed override.
    params: Dict[str, Any] = field(default_factory=dict)
    # Search over the tier plan of `tier.strategy: tiers` (see docs/sweeps.md):
    # split: {count: K, low: 1, high: null}: K strictly ascending split points (high null: L - 1);
    # lrs: {low: ..., high: ..., log: true, monotone: false} or {choices: [...]}: one lr per tier.
    tiers: Dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    """Register the sweeper under `hydra/sweeper` and each sweeps/*.yaml under the group `sweep`."""
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="harness_optuna", node=HarnessOptunaSweeperConf, provider="harness")

    # The files live in sweeps/ at the repository root, where the README points users, but
    # Hydra names a config group after its folder. Registering them here gives the group the
    # name `sweep` whatever the working directory.
    for path in sorted(SWEEPS_DIR.glob("*.yaml")):
        store.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_", provider="harness")


register_configs()
