"""The job side of a sweep trial: open the shared storage, reach the trial, report to it.

The Optuna sweeper (`hydra_plugins/harness_optuna_sweeper`) creates each trial in a shared
Optuna storage and passes its job `optuna_trial.storage`, `optuna_trial.study_name` and
`optuna_trial.number`. The job loads the study from that storage, reports the validation
metric after each evaluation and raises `optuna.TrialPruned` when the study's pruner
decides to prune. This works with any Hydra launcher, because nothing but the storage URL crosses the
process boundary. The sweeper and the jobs share `open_storage` and `build_pruner`.
"""

import logging
import os
import time
import warnings

import optuna
import sqlalchemy.exc

from harness.errors import ConfigError
from harness.journal_heartbeat import HeartbeatJournalStorage
from harness.tracking import mask_passwords

logger = logging.getLogger(__name__)

# Study user attribute with the pruner spec `{"name": ..., "options": {...}}`, written by the
# sweeper, so that every job builds the same pruner as the sweeper.
PRUNER_ATTR = "harness_pruner"
# Trial user attribute with the MLflow run id of the trial's job.
RUN_ID_ATTR = "mlflow_run_id"

# Attempts and wait between them when workers race to create the schema of an empty database.
SCHEMA_ATTEMPTS = 3
SCHEMA_RETRY_S = 2.0

PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}


def is_journal(storage_url: str) -> bool:
    """Return whether `storage_url` names a journal file: anything that is not a `scheme://` URL."""
    return "://" not in storage_url


def open_storage(storage_url: str, heartbeat_interval=None, grace_period=None, stale_trial_callback=None):
    """Open an Optuna storage: an RDB URL (`sqlite:///...`, `postgresql+psycopg://...`) or a journal file.

    The sweeper passes the heartbeat arguments, so that a trial of a worker that died becomes
    FAIL after `grace_period` seconds without a heartbeat, and then `stale_trial_callback`
    runs for it. Jobs open the storage without them.
    """
    # Heartbeats are experimental in Optuna 5.1 and warn on every use, and the sweeper relies on them on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if is_journal(storage_url):
            return _open_journal(storage_url, heartbeat_interval, grace_period, stale_trial_callback)
        return _open_rdb(storage_url, heartbeat_interval, grace_period, stale_trial_callback)


def _open_journal(path: str, heartbeat_interval, grace_period, stale_trial_callback):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(
            f"The Optuna journal file {path!r} cannot be created: the folder {folder!r} does not exist. "
            "Create the folder or set hydra.sweeper.storage to a path in an existing one."
        )
    backend = optuna.storages.journal.JournalFileBackend(path)
    if heartbeat_interval is None:
        return optuna.storages.JournalStorage(backend)
    return HeartbeatJournalStorage(backend, heartbeat_interval, grace_period, stale_trial_callback)


def _open_rdb(storage_url: str, heartbeat_interval, grace_period, stale_trial_callback):
    for attempt in range(1, SCHEMA_ATTEMPTS + 1):
        try:
            return optuna.storages.RDBStorage(
                storage_url,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=stale_trial_callback,
            )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as error:
            # Workers that start together on an empty database race to create Optuna's tables
            # and types (PostgreSQL raises a unique violation for the loser, SQLite "table ...
            # already exists"), so the loser waits for the winner and opens the storage again.
            # A server that refuses connections raises OperationalError on every attempt.
            if attempt == SCHEMA_ATTEMPTS:
                raise ConfigError(
                    f"Failed to open the Optuna storage {mask_passwords(storage_url)} "
                    f"({str(error.orig).splitlines()[0]}). Check hydra.sweeper.storage and that the database "
                    "server runs, or set hydra.sweeper.storage=null for a SQLite file under tracking.root."
                ) from error
            logger.info("Opening the Optuna storage failed (%s), maybe in a race with another worker; retrying",
                        type(error).__name__)
            time.sleep(SCHEMA_RETRY_S)


def build_pruner(name, options=None):
    """Build an Optuna pruner from its name (`median`, `successive_halving`, `hyperband` or None)."""
    if name is None:
        return optuna.pruners.NopPruner()
    if name not in PRUNERS:
        raise ConfigError(
            f"hydra.sweeper.pruner={name!r} is not a known pruner. "
            f"Use one of: {', '.join(PRUNERS)}, or null for no pruning."
        )
    try:
        return PRUNERS[name](**dict(options or {}))
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"hydra.sweeper.pruner_options.{name}={dict(options or {})} is invalid for "
            f"{PRUNERS[name].__name__}: {error}. Fix or remove the option."
        ) from error


class TrialReporter:
    """Reports a job's validation metric to its Optuna trial and raises `TrialPruned` when the pruner decides to prune."""

    def __init__(self, trial: optuna.trial.Trial):
        self.trial = trial
        self.multi_objective = len(trial.study.directions) > 1

    @classmethod
    def from_cfg(cls, trial_cfg):
        """Load the trial that `optuna_trial` names, or return None outside a sweep."""
        if trial_cfg.number is None:
            return None

        storage = open_storage(str(trial_cfg.storage))
        try:
            study_id = storage.get_study_id_from_name(trial_cfg.study_name)
        except KeyError as error:
            raise ConfigError(
                f"optuna_trial.study_name={trial_cfg.study_name!r} is not a study in "
                f"optuna_trial.storage. Only the Optuna sweeper should set optuna_trial.*."
            ) from error

        pruner_spec = storage.get_study_user_attrs(study_id).get(PRUNER_ATTR) or {}
        pruner = build_pruner(pruner_spec.get("name"), pruner_spec.get("options"))
        study = optuna.load_study(study_name=trial_cfg.study_name, storage=storage, pruner=pruner)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(trial_cfg.number))
        logger.info("Reporting to trial %d of study %s", trial_cfg.number, trial_cfg.study_name)
        return cls(optuna.trial.Trial(study, trial_id))

    def report(self, value: float, epoch: int) -> None:
        """Report the validation metric of one epoch; raise `optuna.TrialPruned` if the pruner decides to prune."""
        if self.multi_objective:
            # Optuna cannot prune multi-objective studies, and Trial.report raises there.
            return

        self.trial.report(float(value), step=int(epoch))
        if self.trial.should_prune():
            message = f"trial {self.trial.number} pruned at epoch {epoch} with validation metric {value:.4f}"
            logger.info("Pruned: %s", message)
            raise optuna.TrialPruned(message)

    def set_run_id(self, run_id: str) -> None:
        """Store the job's MLflow run id on the trial (user attribute `mlflow_run_id`)."""
        self.trial.set_user_attr(RUN_ID_ATTR, run_id)


def check_split(split, num_blocks: int, key: str = "tier.split") -> list[int]:
    """Return the split points as a list; raise ConfigError unless they ascend strictly within `0..num_blocks`."""
    points = [split] if isinstance(split, int) else list(split or [])
    for point in points:
        if isinstance(point, bool) or not isinstance(point, int):
            raise ConfigError(f"{key}={points} contains {point!r}: split points must be integers.")
    if any(point < 0 or point > num_blocks for point in points):
        raise ConfigError(
            f"{key}={points} is out of range: the model has {num_blocks} blocks, "
            f"so split points must lie in 0..{num_blocks}."
        )
    if any(later <= earlier for earlier, later in zip(points, points[1:])):
        raise ConfigError(f"{key}={points} must be strictly ascending, e.g. [2, 4].")
    return points


def count_blocks(model_cfg) -> int:
    """Read the number of transformer blocks from the model's config, without loading weights.

    Encoder-decoder models count encoder blocks and then decoder blocks, as harness.tiers
    numbers depths.
    """
    from transformers import AutoConfig

    from harness.models import resolve_pretrained

    source = resolve_pretrained(model_cfg)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=bool(model_cfg.get("trust_remote_code", False)))
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"model.pretrained={source!r}: failed to read the model config to check split ranges: {error}. "
            "Check model.pretrained."
        ) from error

    num_blocks = config.num_hidden_layers
    if getattr(config, "is_encoder_decoder", False):
        decoder_blocks = getattr(config, "num_decoder_layers", None) or getattr(config, "decoder_layers", None)
        num_blocks += decoder_blocks or 0
    return int(num_blocks)

