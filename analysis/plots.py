"""Plots of harness runs, saved as PNG files and optionally logged to an MLflow run.

Each `plot_*` function writes one PNG and returns its path, or raises `PlotSkipped` with
the reason when the runs contain nothing to plot. The figures use matplotlib's object API
(`matplotlib.figure.Figure`, rendered by the Agg canvas), so no display or pyplot state
is needed.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mlflow import MlflowClient

from analysis import compare
from analysis.load import DRIFT_PREFIX, TIER_LR_PREFIX

logger = logging.getLogger(__name__)

ARTIFACT_PATH = "analysis"
ROLES = ("baseline", "layerwise")
# Learning curves get a legend only up to this many tier configs; colours repeat after 10.
MAX_LEGEND_ENTRIES = 10


class PlotSkipped(Exception):
    """Raised when the runs contain nothing that a plot can show; the message gives the reason."""


@dataclass
class PlotOutput:
    """One plot of `make_plots`: its file, or the note with the reason it was skipped."""

    name: str
    title: str
    path: Path | None
    note: str = ""


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """Return the FINISHED baseline and layer-wise runs, without sweep parent runs."""
    return runs[(runs["status"] == "FINISHED") & runs["role"].isin(ROLES)]


def finished_with(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Return the FINISHED runs with a value for `metric`, raising PlotSkipped when no run logged it."""
    if metric not in runs:
        raise PlotSkipped(f"no run has {metric}")
    return finished(compare.finished_runs(runs, metric))


def save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    logger.info("Wrote %s", path)
    return path


def panels(count: int, width: float = 5.0, height: float = 3.8):
    """Return a figure and `count` axes in one row."""
    figure = Figure(figsize=(width * count, height))
    return figure, figure.subplots(1, count, squeeze=False)[0]


def first_split(split) -> float:
    """Return the first split point of a `split` tag ("4", "6,10") as a number, NaN when there is none."""
    text = str(split or "").split(",")[0].strip()
    return float(text) if text.isdigit() else np.nan


def plot_metric_vs_split(runs: pd.DataFrame, path: Path, metric: str = "best_val_metric", *,
                         n_boot: int = 10_000, seed: int = 0) -> Path:
    """Plot `metric` against the (first) split point, one panel per (task, model).

    Dots are runs, error bars are each tier_config's mean and bootstrap CI over seeds, and the
    baseline is a horizontal line at its mean with its CI as a band.
    """
    if metric not in runs:
        raise PlotSkipped(f"no run has {metric}")

    summary = compare.summarize(runs, metric, n_boot=n_boot, seed=seed)
    summary["x"] = summary["split"].map(first_split)
    layerwise = summary[(summary["role"] == "layerwise") & summary["x"].notna()]
    if layerwise.empty:
        raise PlotSkipped(f"no FINISHED layer-wise run with a split point has {metric}")

    usable = compare.finished_runs(runs, metric)
    pairs = layerwise.groupby(["task", "model"]).size().index.tolist()
    figure, axes = panels(len(pairs))
    for ax, (task, model) in zip(axes, pairs):
        same = (summary["task"] == task) & (summary["model"] == model)
        draw_baseline_band(ax, summary[same & (summary["role"] == "baseline")])

        points = usable[(usable["task"] == task) & (usable["model"] == model) & (usable["role"] == "layerwise")]
        ax.scatter(points["split"].map(first_split), points[metric], s=12, alpha=0.4, color="tab:gray",
                   label="runs")

        configs = layerwise[(layerwise["task"] == task) & (layerwise["model"] == model)]
        error = [configs["mean"] - configs["ci_low"], configs["ci_high"] - configs["mean"]]
        ax.errorbar(configs["x"], configs["mean"], yerr=error, fmt="o", color="tab:blue", capsize=3,
                    label="config mean, 95% CI")

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=f"{task} / {model}", xlabel="split point (first block of the upper tier)", ylabel=metric)
        ax.legend(fontsize=7)
    return save(figure, path)


def draw_baseline_band(ax, baseline: pd.DataFrame) -> None:
    for row in baseline.itertuples():
        ax.axhline(row.mean, color="tab:red", linewidth=1)
        ax.axhspan(row.ci_low, row.ci_high, color="tab:red", alpha=0.15, label=f"baseline ({row.n_seeds} seeds)")


def plot_tier_lrs(runs: pd.DataFrame, path: Path, metric: str = "best_val_metric") -> Path:
    """Plot the per-tier learning rates of every layer-wise run as parallel coordinates coloured by `metric`.

    Frozen tiers (no learning rate or 0) leave a gap in the line.
    """
    usable = finished_with(runs, metric)
    usable = usable[usable["role"] == "layerwise"]
    tier_columns = sorted(column for column in usable
                          if column.startswith(TIER_LR_PREFIX) and usable[column].gt(0).any())
    if not tier_columns:
        raise PlotSkipped(f"no FINISHED layer-wise run has both a positive tier_lr.<name> param and {metric}")

    lrs = usable[tier_columns].where(usable[tier_columns] > 0)
    trained = lrs.notna().any(axis=1)
    usable, lrs = usable[trained], lrs[trained]

    norm = Normalize(vmin=usable[metric].min(), vmax=usable[metric].max())
    cmap = colormaps["viridis"]
    figure, (ax,) = panels(1, width=max(5.0, 1.4 * len(tier_columns)))
    positions = np.arange(len(tier_columns))
    for values, value in zip(lrs.to_numpy(), usable[metric]):
        ax.plot(positions, values, marker="o", markersize=3, alpha=0.7, color=cmap(norm(value)))

    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    ax.set_yscale("log")
    ax.set_xticks(positions, [column.removeprefix(TIER_LR_PREFIX) for column in tier_columns], rotation=30)
    ax.set(title=f"per-tier learning rate of {len(usable)} runs", xlabel="tier", ylabel="learning rate")
    return save(figure, path)


def plot_pareto(runs: pd.DataFrame, path: Path, metric: str = "best_val_metric", *, maximize: bool = True) -> Path:
    """Plot `metric` against trainable parameters and against train time, marking the Pareto front."""
    costs = [cost for cost in ("trainable_params", "train_time_s") if cost in runs]
    if not costs:
        raise PlotSkipped("no run has trainable_params or train_time_s")

    usable = finished_with(runs, metric)
    if usable.empty:
        raise PlotSkipped(f"no FINISHED run has {metric}")

    figure, axes = panels(len(costs))
    for ax, cost in zip(axes, costs):
        front = compare.pareto_front(usable, metric, cost, maximize=maximize)
        for role, colour in (("baseline", "tab:red"), ("layerwise", "tab:blue")):
            subset = usable[usable["role"] == role]
            ax.scatter(subset[cost], subset[metric], s=16, alpha=0.6, color=colour, label=role)

        line = usable[front].sort_values(cost)
        ax.step(line[cost], line[metric], where="post", color="black", linewidth=1, label="Pareto front")
        if cost == "trainable_params":
            ax.set_xscale("log")
        ax.set(title=f"{metric} vs {cost}", xlabel=cost, ylabel=metric)
        ax.legend(fontsize=7)
    return save(figure, path)


def plot_drift(runs: pd.DataFrame, path: Path) -> Path:
    """Plot the mean weight drift per depth (`drift_depth_<d>`) for each strategy."""
    drift_columns = sorted((column for column in runs if column.startswith(DRIFT_PREFIX)),
                           key=lambda column: int(column.removeprefix(DRIFT_PREFIX)))
    if not drift_columns:
        raise PlotSkipped("no run has drift_depth_<d> metrics")

    usable = finished(runs).dropna(subset=drift_columns, how="all")
    if usable.empty:
        raise PlotSkipped("no FINISHED run has drift_depth_<d> metrics")

    depths = [int(column.removeprefix(DRIFT_PREFIX)) for column in drift_columns]
    figure, (ax,) = panels(1, width=7.0)
    for strategy, group in usable.groupby("strategy", dropna=False):
        ax.plot(depths, group[drift_columns].mean().to_numpy(), marker="o",
                label=f"{strategy} ({len(group)} runs)")

    ax.set(title="weight drift ||W - W0|| / ||W0|| by depth", xlabel="depth (0 = embeddings, last = head)",
           ylabel="mean relative drift")
    ax.legend(fontsize=7)
    return save(figure, path)


def plot_learning_curves(runs: pd.DataFrame, path: Path, client: MlflowClient) -> Path:
    """Plot the per-epoch `val_<metric_name>` history of every FINISHED run, one colour per tier_config.

    Reads each run's history with `MlflowClient.get_metric_history` (one request per run).
    """
    usable = finished(runs).dropna(subset=["metric_name"])
    if usable.empty:
        raise PlotSkipped("no FINISHED run has a metric_name tag")

    figure, (ax,) = panels(1, width=7.0)
    colours = {config: f"C{index % 10}" for index, config in enumerate(sorted(usable["tier_config"].dropna().unique()))}
    labelled, drawn = set(), 0
    for run in usable.itertuples():
        history = client.get_metric_history(run.run_id, f"val_{run.metric_name}")
        if not history:
            continue
        steps = sorted((point.step, point.value) for point in history)
        label = None if run.tier_config in labelled else run.tier_config
        labelled.add(run.tier_config)
        ax.plot(*zip(*steps), marker=".", alpha=0.6, color=colours.get(run.tier_config, "black"), label=label)
        drawn += 1

    if not drawn:
        raise PlotSkipped("no FINISHED run has a val_<metric_name> history")
    metric_names = ", ".join(sorted(usable["metric_name"].unique()))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=f"validation {metric_names} per epoch ({drawn} runs)", xlabel="epoch", ylabel=metric_names)
    if len(colours) <= MAX_LEGEND_ENTRIES:
        ax.legend(fontsize=7)
    return save(figure, path)


def plot_param_importances(study, path: Path) -> Path:
    """Plot Optuna's parameter importances (`optuna.importance.get_param_importances`) for the first objective."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2:
        raise PlotSkipped(f"study {study.study_name!r} has {len(completed)} COMPLETE trials; "
                          "parameter importances need at least 2")

    target = None if len(study.directions) == 1 else (lambda trial: trial.values[0])
    try:
        importances = optuna.importance.get_param_importances(study, target=target)
    except (RuntimeError, ValueError) as error:
        raise PlotSkipped(f"Optuna could not compute parameter importances: {error}") from error
    if not importances:
        raise PlotSkipped(f"study {study.study_name!r} has no parameter that varies across COMPLETE trials")

    names = list(importances)[::-1]
    figure, (ax,) = panels(1, width=6.0, height=0.5 * len(names) + 1.5)
    ax.barh(names, [importances[name] for name in names], color="tab:blue")
    ax.set(title=f"parameter importance ({len(completed)} trials)", xlabel="importance (normalized)")
    return save(figure, path)


def make_plots(runs: pd.DataFrame, out_dir: Path, *, metric: str = "best_val_metric",
               client: MlflowClient | None = None, study=None, n_boot: int = 10_000,
               seed: int = 0, maximize: bool = True) -> list[PlotOutput]:
    """Write every plot that applies to `runs` under `out_dir`, returning each file or skip note.

    Learning curves need `client` and parameter importances need `study`; without them those
    plots are skipped with a note.
    """
    out_dir = Path(out_dir)
    jobs = [
        ("metric_vs_split", f"{metric} vs split point",
         lambda path: plot_metric_vs_split(runs, path, metric, n_boot=n_boot, seed=seed)),
        ("tier_lrs", "per-tier learning rates", lambda path: plot_tier_lrs(runs, path, metric)),
        ("pareto", f"Pareto front of {metric}", lambda path: plot_pareto(runs, path, metric, maximize=maximize)),
        ("drift", "weight drift by depth", lambda path: plot_drift(runs, path)),
        ("learning_curves", "learning curves", lambda path: learning_curves_or_skip(runs, path, client)),
        ("param_importances", "Optuna parameter importances",
         lambda path: importances_or_skip(study, path)),
    ]

    outputs = []
    for name, title, draw in jobs:
        try:
            outputs.append(PlotOutput(name, title, draw(out_dir / f"{name}.png")))
        except PlotSkipped as skipped:
            logger.info("Skipped plot %s: %s", name, skipped)
            outputs.append(PlotOutput(name, title, None, str(skipped)))
    return outputs


def learning_curves_or_skip(runs: pd.DataFrame, path: Path, client: MlflowClient | None) -> Path:
    if client is None:
        raise PlotSkipped("no MLflow client was given to read metric histories")
    return plot_learning_curves(runs, path, client)


def importances_or_skip(study, path: Path) -> Path:
    if study is None:
        raise PlotSkipped("no Optuna study was given")
    return plot_param_importances(study, path)


def log_plots(client: MlflowClient, run_id: str, outputs: list[PlotOutput]) -> None:
    """Log the written plots as artifacts of `run_id` under `analysis/`."""
    for output in outputs:
        if output.path is not None:
            client.log_artifact(run_id, str(output.path), artifact_path=ARTIFACT_PATH)
    logger.info("Logged %d plots to run %s", sum(output.path is not None for output in outputs), run_id)
