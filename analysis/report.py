"""Write a Markdown report (tables and plots) for an experiment, a sweep or an Optuna study.

    python -m analysis.report --tracking-uri sqlite:///mlruns.db --experiment layerwise --out report/

The report directory gets report.md, the plots as PNG files and the tables as CSV files.
With --parent-run, the plots and report.md are also logged as artifacts of that run.
"""

import argparse
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from analysis import compare, plots
from analysis.load import load_runs, load_study
from harness.errors import ConfigError

logger = logging.getLogger(__name__)

RUN_TABLE_COLUMNS = ["task", "model", "tier_config", "role", "seed", "status", "best_val_metric", "test_metric",
                     "delta_best_val_metric", "train_time_s", "trainable_fraction", "drift_mean", "run_id"]
COMPARISON_COLUMNS = ["task", "model", "tier_config", "role", "n_seeds", "mean", "std", "ci_low", "ci_high",
                      "n_pairs", "mean_diff", "diff_ci_low", "diff_ci_high", "diff_t_low", "diff_t_high", "win_rate",
                      "underpowered"]


def markdown_table(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
    """Format `frame` as a Markdown table with 4 decimals and empty cells for missing values."""
    if columns is not None:
        frame = frame[[column for column in columns if column in frame]]
    if frame.empty:
        return "_No rows._"
    cells = frame.astype(object).where(frame.notna(), None)
    return cells.to_markdown(index=False, floatfmt=".4f", missingval="")


def runs_section(runs: pd.DataFrame) -> list[str]:
    """Return the Markdown lines that count runs by role and status and list the failed runs."""
    counts = runs.assign(role=runs["role"].fillna("(no role)")).groupby(["role", "status"]).size()
    lines = ["## Runs", "", markdown_table(counts.rename("runs").reset_index()), ""]

    failed = runs[runs["status"] == "FAILED"]
    if not failed.empty:
        lines += ["### Failed runs", "", markdown_table(failed, ["tier_config", "seed", "error", "run_id"]), ""]
    return lines


def comparison_section(runs: pd.DataFrame, metric: str, *, n_boot: int, confidence: float, seed: int,
                       maximize: bool, out_dir: Path) -> list[str]:
    """Return the Markdown lines of the comparison table for `metric`, and write it as CSV."""
    lines = [f"## {metric} by config", ""]
    if metric not in runs:
        return lines + [f"_No run logged {metric}._", ""]

    table = compare.comparison_table(runs, metric, n_boot=n_boot, confidence=confidence, seed=seed,
                                     maximize=maximize)
    table.to_csv(out_dir / f"comparison_{metric}.csv", index=False)
    compare.pair_with_baselines(runs, metric).to_csv(out_dir / f"pairs_{metric}.csv", index=False)

    lines += [
        f"Mean and standard deviation over seeds, {confidence:.0%} percentile bootstrap CI "
        f"({n_boot} resamples, seed {seed}). `mean_diff` is the mean paired difference against the "
        "baseline with the same seed, with its paired bootstrap CI; `win_rate` is the fraction of "
        f"seeds where the config beats its baseline. Configs with fewer than {compare.MIN_SEEDS} seeds "
        "are marked `underpowered`.",
        "",
        markdown_table(table, COMPARISON_COLUMNS),
        "",
    ]
    return lines


def plots_section(outputs: list[plots.PlotOutput], out_dir: Path) -> list[str]:
    lines = ["## Plots", ""]
    for output in outputs:
        lines.append(f"### {output.title}")
        lines.append("")
        if output.path is None:
            lines.append(f"_Skipped: {output.note}._")
        else:
            lines.append(f"![{output.title}]({output.path.relative_to(out_dir)})")
        lines.append("")
    return lines


def build_report(runs: pd.DataFrame, out_dir: Path, *, source: str, client: MlflowClient | None = None,
                 study=None, metric: str = "best_val_metric", n_boot: int = 10_000, confidence: float = 0.95,
                 seed: int = 0, maximize: bool = True) -> tuple[Path, list[plots.PlotOutput]]:
    """Write report.md, the plots and the CSV tables under `out_dir`; return report.md and the plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out_dir / "runs.csv", index=False)

    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Layer-wise fine-tuning report", "", f"Source: {source}. Generated {generated}.", ""]
    lines += runs_section(runs)

    stats = {"n_boot": n_boot, "confidence": confidence, "seed": seed, "maximize": maximize, "out_dir": out_dir}
    lines += comparison_section(runs, metric, **stats)
    if metric != "test_metric" and "test_metric" in runs:
        lines += comparison_section(runs, "test_metric", **stats)

    outputs = plots.make_plots(runs, out_dir, metric=metric, client=client, study=study, n_boot=n_boot,
                               seed=seed, maximize=maximize)
    lines += plots_section(outputs, out_dir)

    ordered = runs.sort_values(["task", "model", "role", "tier_config", "seed"], na_position="last")
    lines += ["## Runs table", "", markdown_table(ordered, RUN_TABLE_COLUMNS), ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    logger.info("Wrote %s", path)
    return path, outputs


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Write a Markdown report with comparison tables and plots of harness runs.",
    )
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI to read runs from, for example sqlite:///mlruns.db or "
                             "http://localhost:5000 (default: MLflow's default, MLFLOW_TRACKING_URI)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="report every run of this MLflow experiment (by name)")
    source.add_argument("--parent-run", help="report the child runs of this sweep parent run (run id); the "
                                             "plots and report.md are also logged to it under analysis/")
    source.add_argument("--study", help="report the runs of this Optuna study's trials (needs --storage)")
    parser.add_argument("--storage", help="Optuna storage URL of --study, for example sqlite:///optuna.db")
    parser.add_argument("--out", required=True, type=Path, help="output directory for report.md, PNG and CSV files")
    parser.add_argument("--metric", default="best_val_metric",
                        help="metric to compare (an MLflow metric key; default: best_val_metric)")
    parser.add_argument("--minimize", action="store_true",
                        help="treat the metric as lower-is-better (for a loss); sets win rate and Pareto front")
    parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples per CI (default: 10000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="CI confidence level (default: 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap RNG (default: 0)")
    parser.add_argument("--no-log-artifacts", action="store_true",
                        help="with --parent-run, do not log the plots and report.md to the parent run")
    return parser, parser.parse_args(argv)


def validate_args(args: argparse.Namespace) -> None:
    if args.n_boot < 1:
        raise ConfigError(f"--n-boot={args.n_boot} is invalid; pass a positive number of resamples such as 10000.")
    if not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence={args.confidence} is invalid; pass a level between 0 and 1 such as 0.95.")
    if args.storage and not args.study:
        raise ConfigError("--storage is only used with --study; pass --study NAME too, or drop --storage.")


def describe_source(args: argparse.Namespace) -> str:
    if args.experiment:
        return f"experiment `{args.experiment}`"
    if args.parent_run:
        return f"sweep parent run `{args.parent_run}`"
    return f"Optuna study `{args.study}`"


def run_report(args: argparse.Namespace) -> Path:
    validate_args(args)
    client = MlflowClient(args.tracking_uri)
    runs = load_runs(args.tracking_uri, experiment=args.experiment, parent_run_id=args.parent_run,
                     study_name=args.study, storage=args.storage)
    source = describe_source(args)
    if runs.empty:
        raise ConfigError(f"{source} has no runs at tracking URI {client.tracking_uri!r}; check the source and URI.")
    if args.metric not in runs:
        raise ConfigError(f"--metric={args.metric} is not logged by any run of {source}; pick a logged metric "
                          "such as best_val_metric or test_metric.")

    study = load_study(args.study, args.storage) if args.study else None
    path, outputs = build_report(runs, args.out, source=source, client=client, study=study, metric=args.metric,
                                 n_boot=args.n_boot, confidence=args.confidence, seed=args.seed,
                                 maximize=not args.minimize)

    if args.parent_run and not args.no_log_artifacts:
        plots.log_plots(client, args.parent_run, outputs)
        client.log_artifact(args.parent_run, str(path), artifact_path=plots.ARTIFACT_PATH)
    return path


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser, args = parse_args(argv)
    try:
        path = run_report(args)
    except ConfigError as error:
        parser.error(str(error))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
