"""The sweep: validate everything, open the study and its parent run, then ask, launch and tell.

Each batch asks up to `n_jobs` trials, launches one Hydra job per trial with the configured
launcher, and tells Optuna each job's outcome: COMPLETE with the objective values, PRUNED
when the job raised `optuna.TrialPruned`, FAIL (with user attribute `fail_reason`) when it
raised, returned a non-finite objective, or was lost by the launcher.
"""

import contextlib
import functools
import hashlib
import json
import logging
import math
import numbers
import random
import shlex
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from mlflow.entities import RunStatus
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from harness import tracking
from harness.errors import ConfigError
from harness.trial import PRUNER_ATTR, PRUNERS, RUN_ID_ATTR, build_pruner, count_blocks, is_journal, open_storage

from ._budget import FAIL_REASON_ATTR, GRID_RACE_REASON, OVER_BUDGET_REASON, is_job_failure, open_slots, within_budget
from ._grid import FIXED_PARAMS_ATTR, GRID_RETRIES, grid_points, next_grid_point
from ._parent_run import end_failed_trial_run, finish_parent_run, open_parent_run, record_best, tag_trial_state
from ._samplers import SAMPLERS, build_sampler, check_sampler
from ._search_space import format_value, parse_search_space

logger = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")
# A trial whose worker died (no heartbeat for grace_period) is queued once more with the same params.
STALE_TRIAL_RETRIES = 1
RESULTS_FILE = "optimization_results.yaml"
MAX_REASON_LENGTH = 2000


@dataclass
class InFlight:
    """A trial that was asked and not told yet, with the heartbeat thread that keeps it alive."""

    trial: optuna.trial.Trial
    heartbeat: object
    params: dict = field(default_factory=dict)
    overrides: list = field(default_factory=list)


class OptunaSweep:
    """One worker's part of a sweep, from the sweeper's settings and the command-line overrides."""

    def __init__(self, sweeper, arguments):
        self.sweeper = sweeper
        self.arguments = list(arguments)
        self.settings = {key: _to_plain(value) for key, value in sweeper.settings.items()}
        for key in ("params", "tiers", "sampler_options", "pruner_options"):
            self.settings[key] = self.settings[key] or {}
        self.in_flight: list[InFlight] = []
        self.failures = 0
        self.last_error = None
        # The grid's points when sampler=grid, else None (see _grid.py).
        self.grid_points = None
        self.grid_used_up = False
        self.rng = None

    def run(self):
        """Run trials until the study's budget is used up or max_failures stops this worker."""
        directions, space, job_cfg, n_trials = self._validate()

        storage_url = self._storage_url(job_cfg)
        study_name = self.settings["study_name"] or self._default_study_name(space, directions)
        study, created = self._open_study(storage_url, study_name, directions)

        experiment_id = tracking.start_tracking(job_cfg.tracking)
        tags = self._parent_tags(study_name, storage_url, space, n_trials, directions)
        parent_run_id = open_parent_run(study, created, experiment_id, tags)
        trial_overrides = functools.partial(self._trial_overrides, storage_url, study_name, parent_run_id)

        try:
            stopped = self._run_trials(study, space, n_trials, trial_overrides)
        except BaseException:
            self._fail_in_flight(study, "the sweeper stopped while the trial ran (interrupted or crashed)")
            finish_parent_run(parent_run_id, RunStatus.KILLED)
            raise

        self._summarize(study, space, parent_run_id, n_trials, storage_url)
        if stopped:
            finish_parent_run(parent_run_id, RunStatus.FAILED)
            sys.exit(1)
        finish_parent_run(parent_run_id, RunStatus.FINISHED)

    def _validate(self):
        """Check settings and search space against the composed job config; raise ConfigError before any trial."""
        settings = self.settings
        directions = check_settings(settings)
        config_loader = self.sweeper.hydra_context.config_loader
        parser = OverridesParser.create(config_loader=config_loader)
        space = parse_search_space(settings["params"], settings["tiers"], self.arguments, parser)

        job_cfg = config_loader.load_sweep_config(master_config=self.sweeper.config, sweep_overrides=list(space.fixed))
        # Keys such as tracking.root read `${hydra:runtime.cwd}`, which needs the Hydra config set,
        # as launchers set it for each job.
        HydraConfig.instance().set_config(job_cfg)
        space.validate(job_cfg, lambda: count_blocks(job_cfg.model))

        n_trials = settings["n_trials"]
        if settings["sampler"] == "grid":
            self.grid_points = grid_points(space.grid())
            n_trials = _clamp_to_grid(n_trials, len(self.grid_points))
        return directions, space, job_cfg, n_trials

    @staticmethod
    def _trial_overrides(storage_url: str, study_name: str, parent_run_id: str, number: int) -> list[str]:
        """Return the overrides that connect a job to its trial and its MLflow parent run."""
        return [
            f"optuna_trial.storage={format_value(storage_url)}",
            f"optuna_trial.study_name={format_value(study_name)}",
            f"optuna_trial.number={number}",
            f"optuna_trial.parent_run_id={format_value(parent_run_id)}",
            # One job folder per trial number, unique across workers and resumes.
            f"hydra.sweep.subdir={number}",
        ]

    def _storage_url(self, job_cfg) -> str:
        storage = self.settings["storage"]
        if storage is None:
            return f"sqlite:///{Path(job_cfg.tracking.root).resolve() / 'optuna.db'}"
        return absolute_storage_url(str(storage), Path(self.sweeper.config.hydra.runtime.cwd))

    def _default_study_name(self, space, directions) -> str:
        sweep_name = self.sweeper.config.hydra.runtime.choices.get("sweep") or "sweep"
        identity = {
            "fixed": sorted(space.fixed),
            "space": space.describe(),
            "objectives": self.settings["objectives"],
            "directions": directions,
        }
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:8]
        return f"{sweep_name}-{digest}"

    def _open_study(self, storage_url: str, study_name: str, directions: list):
        settings = self.settings
        storage = open_storage(
            storage_url,
            heartbeat_interval=settings["heartbeat_interval"],
            grace_period=settings["grace_period"],
            stale_trial_callback=_retry_dead_trial,
        )

        # create_study without load_if_exists is atomic: exactly one worker creates the study,
        # and that worker creates the MLflow parent run.
        try:
            optuna.create_study(storage=storage, study_name=study_name, directions=directions)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            created = False

        existing = optuna.load_study(study_name=study_name, storage=storage)
        stored_directions = [direction.name.lower() for direction in existing.directions]
        if stored_directions != directions:
            raise ConfigError(
                f"Study {study_name!r} exists in {display_url(storage_url)} with directions {stored_directions}, "
                f"not {directions}. Set hydra.sweeper.study_name to a new name."
            )

        # Mixing in the trial count makes a resumed worker propose new points, not replay the
        # first proposals of the earlier run. SeedSequence keeps (seed 2, 0 trials) and
        # (seed 0, 2 trials) apart, which a sum would not.
        seed = int(np.random.SeedSequence([settings["seed"], len(existing.get_trials(deepcopy=False))]).generate_state(1)[0])
        self.rng = random.Random(seed)
        sampler = build_sampler(settings["sampler"], settings["sampler_options"].get(settings["sampler"]), seed)
        pruner_options = settings["pruner_options"].get(settings["pruner"]) or {}
        pruner = build_pruner(settings["pruner"], pruner_options)
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        study.set_user_attr(PRUNER_ATTR, {"name": settings["pruner"], "options": pruner_options})

        logger.info(
            "Study %s in %s: %d trials so far, budget %d trials, sampler %s (seed %d), pruner %s",
            study_name, display_url(storage_url), len(existing.get_trials(deepcopy=False)), settings["n_trials"],
            settings["sampler"], seed, settings["pruner"],
        )
        return study, created

    def _parent_tags(self, study_name, storage_url, space, n_trials, directions) -> dict:
        settings = self.settings
        return {
            "role": "sweep",
            "study_name": study_name,
            "storage": display_url(storage_url),
            "sampler": settings["sampler"],
            "pruner": settings["pruner"] or "none",
            "search_space": json.dumps(space.describe(), sort_keys=True),
            "fixed_overrides": " ".join(space.fixed),
            "n_trials": str(n_trials),
            "objectives": ",".join(settings["objectives"]),
            "directions": ",".join(directions),
            "sweep": str(self.sweeper.config.hydra.runtime.choices.get("sweep")),
        }

    def _run_trials(self, study, space, n_trials: int, trial_overrides) -> bool:
        """Ask, launch and tell batches until the budget is used up; return True if max_failures stopped it."""
        max_failures = self.settings["max_failures"]
        wait_deadline = None
        while True:
            with _heartbeat_warnings_ignored():
                fail_stale_trials(study)
            remaining = open_slots(study, n_trials)
            if remaining <= 0:
                if wait_deadline is None:
                    wait_deadline = time.monotonic() + self._staleness_wait_s()
                if self._wait_for_running(study, wait_deadline):
                    continue
                logger.info("Study %s: all %d trials of the budget are finished or running", study.study_name, n_trials)
                return False
            if max_failures is not None and self.failures >= max_failures:
                logger.error(
                    "Stopping this worker: %d of its trials failed (hydra.sweeper.max_failures=%d). Last error: %s. "
                    "Fix the cause and rerun the same command to resume the study.",
                    self.failures, max_failures, self.last_error,
                )
                return True

            wait_deadline = None
            batch = self._ask_batch(study, space, min(remaining, self.settings["n_jobs"]), n_trials)
            if batch:
                self._launch(study, batch, space, trial_overrides)
            if self.grid_used_up:
                logger.warning(
                    "Study %s: no grid point is left to run (each one has a trial or failed %d times), "
                    "so this worker stops short of the budget",
                    study.study_name, GRID_RETRIES + 1,
                )
                return False

    def _staleness_wait_s(self) -> int:
        """Return the longest wait for other workers' trials: the grace period plus one heartbeat interval."""
        interval = self.settings["heartbeat_interval"]
        return (self.settings["grace_period"] or 2 * interval) + interval

    def _wait_for_running(self, study, deadline: float) -> bool:
        """Wait one heartbeat interval if other workers' trials run and the deadline has not passed.

        A trial left RUNNING by a killed worker takes up a budget slot until the stale-trial check
        fails it and queues its retry. Waiting out the grace period lets a worker that was
        resumed right after a kill run that retry, so the budget stays exact. A trial still
        RUNNING at the deadline has a live worker, which finishes it.
        """
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running or time.monotonic() >= deadline:
            return False
        logger.info(
            "Study %s: the budget is used up. Waiting for RUNNING trials %s of other workers, up to %.0f s more "
            "(a dead worker's trial fails after grace_period without a heartbeat, and this worker runs its retry)",
            study.study_name, [trial.number for trial in running], deadline - time.monotonic(),
        )
        time.sleep(self.settings["heartbeat_interval"])
        return True

    def _ask_batch(self, study, space, size: int, n_trials: int) -> list[InFlight]:
        for _ in range(size):
            if self.grid_points is not None and not self._enqueue_grid_point(study):
                break
            with _heartbeat_warnings_ignored():
                trial = study.ask()
            if self.grid_points is not None and FIXED_PARAMS_ATTR not in study._storage.get_trial(trial._trial_id).system_attrs:
                # Another worker asked for the queued grid point first, so this trial has none.
                self._tell(study, trial, TrialState.FAIL, None, GRID_RACE_REASON)
                continue
            if not within_budget(study, trial.number, n_trials):
                logger.info("Trial %d: %s", trial.number, OVER_BUDGET_REASON)
                self._tell(study, trial, TrialState.FAIL, None, OVER_BUDGET_REASON)
                break

            # Optuna's own heartbeat thread, as Study.optimize runs it (private API in Optuna 5.1);
            # it does nothing for storages without heartbeats.
            heartbeat = optuna.storages._heartbeat.get_heartbeat_thread(trial._trial_id, study._storage)
            heartbeat.start()
            item = InFlight(trial, heartbeat)
            self.in_flight.append(item)
            item.params = space.suggest(trial)
            item.overrides = space.overrides(item.params)
        return list(self.in_flight)

    def _enqueue_grid_point(self, study) -> bool:
        """Queue the next grid point unless a queued trial waits already; return False when the grid is used up."""
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return True
        point = next_grid_point(study, self.grid_points, self.rng)
        if point is None:
            self.grid_used_up = True
            return False
        study.enqueue_trial(point)
        return True

    def _launch(self, study, batch: list[InFlight], space, trial_overrides) -> None:
        jobs = [space.fixed + item.overrides + trial_overrides(item.trial.number) for item in batch]
        try:
            self.sweeper.validate_batch_is_legal(jobs)
            returns = self.sweeper.launcher.launch(jobs, initial_job_idx=batch[0].trial.number)
        except Exception as error:
            # A sampled value that Hydra rejects fails the whole batch, and so does a launcher
            # that lost a job (a dead SLURM node). The sweep goes on, bounded by max_failures.
            logger.exception("Launching trials %s failed", [item.trial.number for item in batch])
            returns = [error] * len(batch)

        for item, job_return in zip(batch, returns):
            state, values, reason = self._outcome(job_return)
            self._finish(study, item, state, values, reason)

    def _outcome(self, job_return):
        """Return (state, values, fail reason) for one job's JobReturn, or the error that lost it."""
        if isinstance(job_return, Exception):
            return TrialState.FAIL, None, f"launch failed: {type(job_return).__name__}: {job_return}"
        if job_return.status != JobStatus.COMPLETED:
            # JobReturn keeps a failed job's exception in _return_value; its return_value
            # property re-raises it and prints an error even for a pruned trial.
            error = job_return._return_value
            if isinstance(error, optuna.TrialPruned):
                return TrialState.PRUNED, None, None
            # A job's exception (a CUDA out-of-memory error too) fails only its own trial.
            return TrialState.FAIL, None, f"{type(error).__name__}: {error}"

        result = job_return.return_value

        objectives = self.settings["objectives"]
        if not isinstance(result, Mapping):
            return TrialState.FAIL, None, f"the task function returned {result!r}, not a dict with {objectives}"
        missing = [name for name in objectives if name not in result]
        if missing:
            return TrialState.FAIL, None, f"objectives {missing} are missing from the job's result (keys: {sorted(result)})"
        values = [result[name] for name in objectives]
        for name, value in zip(objectives, values):
            if not _is_finite_number(value):
                return TrialState.FAIL, None, f"objective {name}={value!r} is not a finite number"
        return TrialState.COMPLETE, [float(value) for value in values], None

    def _finish(self, study, item: InFlight, state, values, reason) -> None:
        trial = item.trial
        try:
            finished = self._tell(study, trial, state, values, reason)
        finally:
            item.heartbeat.join()
            self.in_flight.remove(item)

        run_id = finished.user_attrs.get(RUN_ID_ATTR)
        if finished.state == TrialState.FAIL:
            end_failed_trial_run(run_id)
        else:
            tag_trial_state(run_id, finished.state.name)
        if finished.state != state:
            reason = f"another worker finished the trial as {finished.state.name} first"
        state = finished.state
        if state == TrialState.COMPLETE:
            objective_text = ", ".join(f"{name}={value:.4g}" for name, value in zip(self.settings["objectives"], values))
            logger.info("Trial %d COMPLETE: %s | %s", trial.number, objective_text, " ".join(item.overrides))
        elif state == TrialState.PRUNED:
            logger.info("Trial %d PRUNED | %s", trial.number, " ".join(item.overrides))
        else:
            self.failures += 1
            self.last_error = reason
            logger.error("Trial %d FAIL: %s | %s", trial.number, reason, " ".join(item.overrides))

    def _tell(self, study, trial, state, values, reason):
        """Tell Optuna the trial's outcome and return the trial as stored afterwards."""
        try:
            if reason is not None:
                trial.set_user_attr(FAIL_REASON_ATTR, reason[:MAX_REASON_LENGTH])
            study.tell(trial, values, state=state, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.warning("Trial %d was already finished by another worker's stale-trial check", trial.number)
        return study._storage.get_trial(trial._trial_id)

    def _fail_in_flight(self, study, reason: str) -> None:
        for item in list(self.in_flight):
            self._finish(study, item, TrialState.FAIL, None, reason)

    def _summarize(self, study, space, parent_run_id: str, n_trials: int, storage_url: str) -> None:
        trials = study.get_trials(deepcopy=False)
        counts = {
            "trials_complete": sum(trial.state == TrialState.COMPLETE for trial in trials),
            "trials_pruned": sum(trial.state == TrialState.PRUNED for trial in trials),
            "trials_failed": sum(is_job_failure(trial) for trial in trials),
            # Compute spent: the validation epochs reported by every trial, pruned and failed ones included.
            "trial_epochs": sum(len(trial.intermediate_values) for trial in trials),
        }
        results = {
            "study_name": study.study_name,
            "storage": display_url(storage_url),
            "n_trials": n_trials,
            **counts,
        }

        best = self._best_trial(study)
        if best is None:
            logger.warning("Study %s has no COMPLETE trial, so there is no best config yet", study.study_name)
        else:
            overrides = space.overrides(best.params)
            command = " ".join([_program()] + [shlex.quote(override) for override in space.fixed + overrides])
            results["best"] = {
                "number": best.number,
                "values": dict(zip(self.settings["objectives"], best.values)),
                "params": best.params,
                "overrides": overrides,
                "command": command,
                "mlflow_run_id": best.user_attrs.get(RUN_ID_ATTR),
            }
            if len(study.directions) > 1:
                results["pareto_front"] = [trial.number for trial in study.best_trials]
            record_best(parent_run_id, results["best"], counts)
            _print_best(study, results)

        sweep_dir = Path(self.sweeper.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)

    def _best_trial(self, study):
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return None
        if len(study.directions) == 1:
            return study.best_trial
        # On a Pareto front, report the trial that is best on the first objective.
        sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
        return max(study.best_trials, key=lambda trial: sign * trial.values[0])


def _retry_dead_trial(study, trial) -> None:
    """Queue a dead worker's trial once more with the same params, and end its MLflow run as FAILED."""
    logger.warning("Trial %d FAIL: its worker sent no heartbeat for the grace period (killed or lost)", trial.number)
    with _heartbeat_warnings_ignored():
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=STALE_TRIAL_RETRIES)(study, trial)
    end_failed_trial_run(trial.user_attrs.get(RUN_ID_ATTR))


def check_settings(settings: dict) -> list[str]:
    """Raise ConfigError for invalid sweeper settings; return the directions, one per objective."""
    for key, minimum in (("n_trials", 1), ("n_jobs", 1), ("heartbeat_interval", 1), ("seed", 0)):
        value = settings[key]
        if not _is_int(value) or value < minimum:
            raise ConfigError(f"hydra.sweeper.{key}={value!r} is invalid: expected an integer >= {minimum}.")
    for key in ("max_failures", "grace_period"):
        value = settings[key]
        if value is not None and (not _is_int(value) or value < 1):
            raise ConfigError(f"hydra.sweeper.{key}={value!r} is invalid: expected null or an integer >= 1.")
    grace_period, interval = settings["grace_period"], settings["heartbeat_interval"]
    if grace_period is not None and grace_period <= interval:
        # A live trial would go stale between two of its heartbeats, and other workers would fail it.
        raise ConfigError(
            f"hydra.sweeper.grace_period={grace_period} is invalid: it must be greater than "
            f"hydra.sweeper.heartbeat_interval={interval}. Set it to null for 2 x heartbeat_interval."
        )

    objectives = settings["objectives"]
    if not objectives:
        raise ConfigError("hydra.sweeper.objectives is empty. Name at least one key of the job's result, e.g. [best_val_metric].")
    direction = settings["direction"]
    directions = [direction] if isinstance(direction, str) else list(direction)
    for value in directions:
        if value not in DIRECTIONS:
            raise ConfigError(f"hydra.sweeper.direction={direction!r}: {value!r} is not maximize or minimize.")
    if len(directions) != len(objectives):
        raise ConfigError(
            f"hydra.sweeper.direction={directions} has {len(directions)} entries but hydra.sweeper.objectives="
            f"{objectives} has {len(objectives)}. Give one direction per objective."
        )

    check_sampler(settings["sampler"], len(objectives))
    for key, known in (("sampler_options", SAMPLERS), ("pruner_options", PRUNERS)):
        unknown = set(settings[key]) - set(known)
        if unknown:
            raise ConfigError(
                f"hydra.sweeper.{key} has keys {sorted(unknown)}, which are not {key.split('_')[0]} names. "
                f"Nest the options under the name, e.g. {key}: {{{next(iter(known))}: {{...}}}}."
            )
    build_pruner(settings["pruner"], settings["pruner_options"].get(settings["pruner"]))
    if settings["pruner"] is not None and len(objectives) > 1:
        raise ConfigError(
            f"hydra.sweeper.pruner={settings['pruner']}: Optuna cannot prune a multi-objective study. "
            "Set hydra.sweeper.pruner=null."
        )
    return directions


def absolute_storage_url(storage: str, launch_dir: Path) -> str:
    """Make a relative journal path or SQLite path absolute under `launch_dir`.

    Jobs may run in another working directory (a SLURM node, a joblib worker), so they get
    absolute paths.
    """
    if is_journal(storage):
        return str((launch_dir / storage).resolve())
    prefix = "sqlite:///"
    path = storage[len(prefix):]
    if storage.startswith(prefix) and path and not path.startswith("/") and path != ":memory:":
        return prefix + str((launch_dir / path).resolve())
    return storage


def display_url(storage_url: str) -> str:
    """Return the storage URL with any password masked, for logs and MLflow tags."""
    return tracking.mask_passwords(storage_url)


def _clamp_to_grid(n_trials: int, size: int) -> int:
    if n_trials > size:
        logger.warning("The grid has %d points, so the sweep runs %d trials, not n_trials=%d", size, size, n_trials)
        return size
    return n_trials


def _print_best(study, results: dict) -> None:
    best = results["best"]
    lines = [
        f"Best trial {best['number']} of study {study.study_name} "
        f"({results['trials_complete']} COMPLETE, {results['trials_pruned']} PRUNED, {results['trials_failed']} FAIL):"
    ]
    lines += [f"  {name} = {value:.6g}" for name, value in best["values"].items()]
    lines += [f"  {name} = {value}" for name, value in best["params"].items()]
    if "pareto_front" in results:
        lines.append(f"Pareto front: trials {results['pareto_front']}")
    lines += ["Rerun the best config:", f"  {best['command']}"]
    print("\n".join(lines))


@contextlib.contextmanager
def _heartbeat_warnings_ignored():
    # Optuna 5.1 marks fail_stale_trials experimental and warns that heartbeats are meant for
    # Study.optimize; this sweeper runs the heartbeat threads itself, as Study.optimize does.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def _program() -> str:
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name}"
    return f"python {sys.argv[0]}"


def _to_plain(value):
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
