"""Hydra entry point: `python -m harness.run` runs one experiment, `-m` a grid or a sweep.

Each job validates its config and builds data, model and tier plan before any compute,
makes sure its full fine-tuning baseline exists (`baseline=auto`), trains, and records
one MLflow run linked to that baseline.
"""

import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from harness import baseline as baselines
from harness import experiment, tracking
from harness.errors import ConfigError

logger = logging.getLogger(__name__)

FAILED_JOBS_FILE = "failed_jobs.txt"


def _in_trial(cfg) -> bool:
    return cfg.optuna_trial.number is not None


def _trial_reporter(cfg):
    if not _in_trial(cfg):
        return None
    from harness.trial import TrialReporter

    return TrialReporter.from_cfg(cfg.optuna_trial)


def _sweep_id() -> str | None:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return str(Path(hydra_cfg.sweep.dir))


def ensure_baseline(cfg, experiment_id: str, key: str, sweep_id):
    """Return the FINISHED baseline run for `key`, running it first when `baseline=auto`."""
    with baselines.baseline_lock(cfg, key):
        found = baselines.find_baseline(experiment_id, key)
        if found is not None:
            logger.info("Baseline: reusing run %s (key %s)", found.info.run_id, key)
            return found
        if cfg.baseline == "require":
            raise ConfigError(
                f"baseline=require but no FINISHED full fine-tuning run with key {key} exists in "
                f"experiment {cfg.tracking.experiment!r}. Run with baseline=auto to create it, or baseline=off."
            )

        logger.info("Baseline: no run with key %s yet, running full fine-tuning first", key)
        prepared = experiment.prepare(baselines.baseline_config(cfg))
        logger.info("Baseline plan:\n%s", experiment.describe(prepared))
        tags = experiment.run_tags(prepared, key, sweep_id)
        experiment.execute(prepared, tags)
        return baselines.find_baseline(experiment_id, key)


def run_job(cfg) -> dict | None:
    """Run one experiment and return its summary metrics (the objective values of a sweep)."""
    if cfg.dry_run:
        print(experiment.describe(experiment.prepare(cfg)))
        return None

    experiment.check_train_config(cfg)
    experiment_id = tracking.start_tracking(cfg.tracking)
    prepared = experiment.prepare(cfg)
    logger.info("Plan:\n%s", experiment.describe(prepared))

    key = baselines.baseline_key(cfg)
    sweep_id = _sweep_id()
    baseline_run = None
    if prepared.role == "layerwise" and cfg.baseline != "off":
        baseline_run = ensure_baseline(cfg, experiment_id, key, sweep_id)

    tags = experiment.run_tags(prepared, key, sweep_id)
    if _in_trial(cfg):
        tags.update(study_name=str(cfg.optuna_trial.study_name), trial_number=str(cfg.optuna_trial.number))
    summary = experiment.execute(
        prepared, tags,
        parent_run_id=cfg.optuna_trial.get("parent_run_id"),
        reporter=_trial_reporter(cfg),
        baseline_run=baseline_run,
    )
    _print_summary(cfg, summary, baseline_run)
    return summary


def _print_summary(cfg, summary: dict, baseline_run) -> None:
    metric = cfg.task.metric
    lines = [f"Validation {metric} (best epoch): {summary['best_val_metric']:.4f}"]
    if "test_metric" in summary:
        lines.append(f"Test {metric}: {summary['test_metric']:.4f}")
    if baseline_run is not None:
        base = baseline_run.data.metrics["best_val_metric"]
        lines.append(
            f"Baseline (full fine-tuning, run {baseline_run.info.run_id}): {base:.4f}, "
            f"delta {summary['delta_best_val_metric']:+.4f}, speedup {summary['speedup']:.2f}x"
        )
    lines.append(f"Trainable parameters: {100 * summary['trainable_fraction']:.1f}%")
    lines.append(f"Open the MLflow UI: mlflow ui --backend-store-uri {tracking.tracking_uri(cfg.tracking)}")
    print("\n".join(lines))


def _record_failure(cfg, error: BaseException) -> None:
    hydra_cfg = HydraConfig.get()
    overrides = " ".join(hydra_cfg.overrides.task) or "(no overrides)"
    line = f"job {hydra_cfg.job.num}: {overrides}: {type(error).__name__}: {error}"
    logger.error("Job failed, the multirun goes on: %s", line)
    with open(Path(hydra_cfg.sweep.dir) / FAILED_JOBS_FILE, "a", encoding="utf-8") as handle:
        handle.write(line.replace("\n", " ") + "\n")


class FailedJobsCallback(Callback):
    """Exit non-zero at the end of a multirun that had failed jobs, and name them."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # A rerun into the same sweep folder starts with a clean list.
        (Path(config.hydra.sweep.dir) / FAILED_JOBS_FILE).unlink(missing_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = Path(config.hydra.sweep.dir) / FAILED_JOBS_FILE
        if not path.exists():
            return
        failed = path.read_text(encoding="utf-8").strip().splitlines()
        logger.error("%d job(s) failed:\n%s", len(failed), "\n".join(failed))
        sys.exit(1)


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    # Schedulers and `timeout` stop jobs with SIGTERM: handle it like Ctrl-C, so the run is KILLED.
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run_job(cfg)
    except ConfigError as error:
        if multirun and not _in_trial(cfg):
            _record_failure(cfg, error)
            return None
        if _in_trial(cfg):
            raise
        logger.error("Invalid input: %s", error)
        sys.exit(2)
    except Exception as error:
        # In a grid, one failing job is recorded and the others still run. A sweeper's trial
        # re-raises so that the sweeper marks the trial FAILED or PRUNED.
        if multirun and not _in_trial(cfg):
            logger.exception("Job failed")
            _record_failure(cfg, error)
            return None
        raise


if __name__ == "__main__":
    # Also before the first job, so that SIGTERM to a sweep ends its parent run as KILLED.
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    main()
