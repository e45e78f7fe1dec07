"""Rerun the best configs of an Optuna study over several seeds, then compare them with the baseline.

    python -m analysis.confirm --study NAME --storage sqlite:///optuna.db --top-k 3 --seeds 5

Each of the top-k COMPLETE trials (distinct params, best value first) becomes one Hydra
multirun `python -m harness.run -m seed=0,...,N-1 <overrides>`. The overrides reproduce the
trial's job (see `analysis.overrides`): the sweep's fixed overrides, the trial run's tier spec
and the trial params, then the positional overrides of this command.

The baseline needs no command of its own: with `baseline=auto` (the harness default) every
layer-wise job reuses the FINISHED full fine-tuning run with its seed, or runs it first.
Each command gets its own `hydra.sweep.dir`, which the harness records as the `sweep_id`
tag. The comparison table is built from the runs with those tags and their baselines.
"""

import argparse
import logging
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import optuna
import pandas as pd
from mlflow import MlflowClient

from analysis import compare, report
from analysis.load import check_sqlite_file, load_runs, load_study
from analysis.overrides import (format_override, merge_overrides, override_key, override_value,
                                sweep_fixed_overrides, tier_overrides, trial_overrides)
from harness.errors import ConfigError

logger = logging.getLogger(__name__)

# Override keys that confirm sets itself, so the positional overrides must not set them.
RESERVED_KEYS = ("seed", "hydra.sweep.dir")
# The harness default of tracking.experiment (conf/tracking/default.yaml).
DEFAULT_EXPERIMENT = "layerwise"


def top_trials(study, top_k: int, objective: int = 0) -> list:
    """Return up to `top_k` COMPLETE trials with distinct params, best `objective` value first."""
    if not 0 <= objective < len(study.directions):
        raise ConfigError(
            f"--objective={objective} is invalid: study {study.study_name!r} has {len(study.directions)} "
            f"objective(s). Pass an index from 0 to {len(study.directions) - 1}."
        )

    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        raise ConfigError(f"study {study.study_name!r} has no COMPLETE trial; run or finish the sweep first.")

    maximize = study.directions[objective] == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(completed, key=lambda trial: (-trial.values[objective] if maximize
                                                  else trial.values[objective], trial.number))
    chosen, seen = [], set()
    for trial in ranked:
        params = tuple(sorted(trial.params.items()))
        if params in seen:
            continue
        seen.add(params)
        chosen.append(trial)
        if len(chosen) == top_k:
            break
    return chosen


def check_overrides(overrides: list[str], trials: list) -> None:
    """Reject positional overrides that are not key=value, set a reserved key or set a trial param."""
    trial_keys = {override_key(item) for trial in trials for item in trial_overrides(trial.params)}
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is invalid; write it as key=value (for example task=sst2).")
        key = override_key(override)
        if key in RESERVED_KEYS:
            raise ConfigError(
                f"override {override!r} sets {key}, which analysis.confirm sets itself; use --seeds or --sweep-dir."
            )
        if key in trial_keys:
            raise ConfigError(
                f"override {override!r} sets {key}, which the study's trials set; drop it from the command."
            )


def tracking_flags(args: argparse.Namespace) -> list[str]:
    """Return the tracking overrides that --tracking-uri and --experiment set."""
    flags = []
    if args.tracking_uri:
        flags.append(format_override("tracking.uri", args.tracking_uri))
    if args.experiment:
        flags.append(format_override("tracking.experiment", args.experiment))
    return flags


def tracking_location(overrides: list[str]) -> tuple[str, str]:
    """Return the tracking URI and experiment that `python -m harness.run <overrides>` writes to.

    Follows conf/tracking/default.yaml: tracking.uri, else the SQLite file under tracking.root,
    whose default is the launch directory (here the current directory).
    """
    values = {override_key(item): override_value(item) for item in overrides}
    experiment = str(values.get("tracking.experiment") or DEFAULT_EXPERIMENT)
    if values.get("tracking.uri"):
        return str(values["tracking.uri"]), experiment

    root = Path(str(values.get("tracking.root") or Path.cwd()))
    return f"sqlite:///{root.resolve() / 'mlruns.db'}", experiment


def sweep_client(args: argparse.Namespace) -> MlflowClient | None:
    """Return a client for the store of the sweep's runs, or None with a warning when it cannot be read."""
    uri, _ = tracking_location([*args.overrides, *tracking_flags(args)])
    try:
        check_sqlite_file(uri)
    except ConfigError as error:
        logger.warning("Not reading the sweep's runs: %s", error)
        return None
    return MlflowClient(uri)


def job_overrides(trial, *, fixed: list[str], client: MlflowClient | None, args: argparse.Namespace) -> list[str]:
    """Return the overrides that rerun `trial`: fixed, tier spec, trial params, positional, tracking flags."""
    tier = tier_overrides(client, trial.user_attrs.get("mlflow_run_id")) if client else []
    return merge_overrides(fixed, tier, trial_overrides(trial.params), args.overrides, tracking_flags(args))


def build_command(trial_number: int, overrides: list[str], *, seeds: int, sweep_dir: Path,
                  python: str = sys.executable) -> list[str]:
    """Return the `python -m harness.run -m seed=...` command of one trial, with its own sweep directory."""
    seed_list = ",".join(str(seed) for seed in range(seeds))
    trial_dir = Path(sweep_dir).resolve() / f"trial-{trial_number}"
    return [python, "-m", "harness.run", "-m", f"seed={seed_list}",
            format_override("hydra.sweep.dir", str(trial_dir)), *overrides]


def sweep_dir_of(command: list[str]) -> str:
    """Return the `hydra.sweep.dir` value of a command from `build_command` (the runs' sweep_id tag)."""
    return str(override_value(next(item for item in command if item.startswith("hydra.sweep.dir="))))


def run_commands(commands: list[list[str]]) -> list[list[str]]:
    """Run the commands one after another and return the ones that exited non-zero."""
    failed = []
    for index, command in enumerate(commands, start=1):
        logger.info("Command %d of %d: %s", index, len(commands), shlex.join(command))
        result = subprocess.run(command, check=False)
        if result.returncode != 0:
            logger.error("Command %d exited with status %d; its failed jobs are listed in %s/failed_jobs.txt",
                         index, result.returncode, sweep_dir_of(command))
            failed.append(command)
    return failed


def confirmation_runs(runs: pd.DataFrame, sweep_ids: list[str]) -> pd.DataFrame:
    """Return the runs tagged with one of `sweep_ids`, plus the baselines that they link to."""
    new = runs["sweep_id"].isin(sweep_ids)
    linked = runs["run_id"].isin(runs.loc[new, "baseline_run_id"].dropna())
    return runs[new | linked].reset_index(drop=True)


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.confirm",
        description="Rerun the top-k configs of an Optuna study over several seeds with python -m harness.run, "
                    "then print the comparison against the full fine-tuning baseline.",
    )
    parser.add_argument("--study", required=True, help="name of the Optuna study to take the configs from")
    parser.add_argument("--storage", required=True, help="Optuna storage URL of the study, e.g. sqlite:///optuna.db")
    parser.add_argument("--top-k", type=int, default=3, help="number of best COMPLETE trials to rerun (default: 3)")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds per config, 0 to N-1 (default: 5)")
    parser.add_argument("--objective", type=int, default=0,
                        help="index of the objective that ranks trials in a multi-objective study (default: 0)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI of the sweep and the reruns, passed as tracking.uri (default: "
                             "the sweep's tracking overrides, else sqlite:///<current directory>/mlruns.db)")
    parser.add_argument("--experiment", default=None,
                        help="MLflow experiment for the reruns, passed as tracking.experiment (default: the "
                             "sweep's, else layerwise)")
    parser.add_argument("--sweep-dir", type=Path, default=None,
                        help="directory for the Hydra multiruns, one subdirectory per trial "
                             "(default: multirun/confirm-<study>-<UTC time>)")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write a full report (report.md, plots, CSV) of the reruns to this directory")
    parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples per CI (default: 10000)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit without running them")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides for every command, after the sweep's fixed overrides (which are "
                             "read from the sweep's MLflow parent run), e.g. train.epochs=5")
    return parser, parser.parse_args(argv)


def validate_args(args: argparse.Namespace) -> None:
    if args.top_k < 1:
        raise ConfigError(f"--top-k={args.top_k} is invalid; pass a positive number of configs such as 3.")
    if args.seeds < 1:
        raise ConfigError(f"--seeds={args.seeds} is invalid; pass a positive number of seeds such as 5.")
    if args.n_boot < 1:
        raise ConfigError(f"--n-boot={args.n_boot} is invalid; pass a positive number of resamples such as 10000.")


def confirm(args: argparse.Namespace) -> int:
    """Build and run (or print) the commands, then print the comparison table; return the exit status."""
    validate_args(args)
    study = load_study(args.study, args.storage)
    trials = top_trials(study, args.top_k, args.objective)
    check_overrides(args.overrides, trials)

    client = sweep_client(args)
    fixed = sweep_fixed_overrides(client, study) if client else []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    sweep_dir = args.sweep_dir or Path("multirun") / f"confirm-{args.study}-{stamp}"

    jobs = [job_overrides(trial, fixed=fixed, client=client, args=args) for trial in trials]
    commands = [build_command(trial.number, overrides, seeds=args.seeds, sweep_dir=sweep_dir)
                for trial, overrides in zip(trials, jobs)]
    for trial in trials:
        logger.info("Trial %d (value %s): %s", trial.number, trial.values, trial.params)
    if args.dry_run:
        print("\n".join(shlex.join(command) for command in commands))
        return 0

    failed = run_commands(commands)
    tracking_uri, experiment = tracking_location(jobs[0])
    runs = confirmation_runs(load_runs(tracking_uri, experiment=experiment),
                             [sweep_dir_of(command) for command in commands])
    if runs.empty:
        raise ConfigError(f"no run of the reruns was found in experiment {experiment!r} at {tracking_uri!r}; "
                          "pass the --tracking-uri that the harness writes to.")

    table = compare.comparison_table(runs, n_boot=args.n_boot)
    print(report.markdown_table(table, report.COMPARISON_COLUMNS))
    if args.out:
        report.build_report(runs, args.out, source=f"confirmation of study `{args.study}`",
                            client=MlflowClient(tracking_uri), n_boot=args.n_boot)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser, args = parse_args(argv)
    try:
        return confirm(args)
    except ConfigError as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
