"""A Hydra app that fakes training for the sweeper tests: a few "epochs" of a known score, no model.

It follows harness.run's trial contract: it reports each epoch's validation metric through
TrialReporter, opens an MLflow child run of the sweep's parent, and returns a dict of
summary metrics. Config switches make chosen trial numbers raise, return NaN, stop as on
Ctrl-C, or SIGKILL their own process.
"""

import os
import signal
import time

import hydra
import mlflow
from omegaconf import DictConfig

from harness import tracking
from harness.trial import TrialReporter


def score(cfg) -> float:
    """Return the final validation metric of a config: best at x=0.3, y=0.7, choice=b."""
    bonus = 0.1 if cfg.choice == "b" else 0.0
    return 0.8 - (cfg.x - 0.3) ** 2 - (cfg.y - 0.7) ** 2 + bonus


@hydra.main(config_path="conf", config_name="toy", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    number = cfg.optuna_trial.number
    reporter = TrialReporter.from_cfg(cfg.optuna_trial)
    tracking.start_tracking(cfg.tracking)
    tags = {"study_name": str(cfg.optuna_trial.study_name), "trial_number": str(number)}
    with mlflow.start_run(parent_run_id=cfg.optuna_trial.parent_run_id, tags=tags) as run:
        if reporter is not None:
            reporter.set_run_id(run.info.run_id)

        final = score(cfg)
        best = float("-inf")
        for epoch in range(1, cfg.epochs + 1):
            if number in cfg.kill_trials and epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            if number in cfg.interrupt_trials and epoch == 2:
                raise KeyboardInterrupt
            if number in cfg.fail_trials:
                raise RuntimeError(f"toy failure in trial {number}")
            time.sleep(cfg.epoch_sleep_s)
            value = final * (1 - 0.5 ** epoch)
            best = max(best, value)
            mlflow.log_metric("val_accuracy", value, step=epoch)
            if reporter is not None:
                reporter.report(value, epoch)

        if number in cfg.nan_trials:
            best = float("nan")
        summary = {
            "best_val_metric": best,
            "delta_best_val_metric": best - 0.5,
            "trainable_params": 1000.0 * cfg.x,
            "tier_lrs_sum": float(sum(cfg.tier.lrs)),
        }
        mlflow.log_metrics(summary)
    return summary


if __name__ == "__main__":
    main()
