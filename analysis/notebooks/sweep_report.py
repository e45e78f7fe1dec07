# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Sweep report
#
# The trials of one sweep: the best configs, the per-tier learning rates coloured by the metric,
# the learning curves, the Pareto fronts and, for an Optuna study, the parameter importances.
#
# Set the source with environment variables before starting Jupyter (or edit the next cell):
#
# - `HARNESS_TRACKING_URI`: MLflow tracking URI (default `sqlite:///mlruns.db`)
# - one source: `HARNESS_STUDY` with `HARNESS_STORAGE` (an Optuna study and its storage URL),
#   `HARNESS_PARENT_RUN` (the run id of the sweep's parent run) or `HARNESS_EXPERIMENT`
#   (an experiment name, the default `layerwise`)
# - `HARNESS_METRIC`: the metric to rank by (default `best_val_metric`)
# - `HARNESS_OUT_DIR`: where the plots are written (default `analysis_out/sweep_report`)
# - `HARNESS_N_BOOT`: bootstrap resamples per CI (default 10000)

# %%
import os
from pathlib import Path

from IPython.display import Image, display
from mlflow import MlflowClient

from analysis import compare, plots
from analysis.load import load_runs, load_study

TRACKING_URI = os.environ.get("HARNESS_TRACKING_URI", "sqlite:///mlruns.db")
STUDY = os.environ.get("HARNESS_STUDY") or None
STORAGE = os.environ.get("HARNESS_STORAGE") or None
PARENT_RUN = None if STUDY else os.environ.get("HARNESS_PARENT_RUN") or None
EXPERIMENT = None if STUDY or PARENT_RUN else os.environ.get("HARNESS_EXPERIMENT", "layerwise")
METRIC = os.environ.get("HARNESS_METRIC", "best_val_metric")
OUT_DIR = Path(os.environ.get("HARNESS_OUT_DIR", "analysis_out/sweep_report"))
N_BOOT = int(os.environ.get("HARNESS_N_BOOT", "10000"))

# %%
runs = load_runs(TRACKING_URI, experiment=EXPERIMENT, parent_run_id=PARENT_RUN, study_name=STUDY, storage=STORAGE)
study = load_study(STUDY, STORAGE) if STUDY else None
runs.groupby(["role", "status"], dropna=False).size()

# %% [markdown]
# ## Best runs

# %%
tier_lr_columns = [column for column in runs if column.startswith("tier_lr.")]
columns = ["tier_config", "seed", METRIC, "delta_" + METRIC, "trainable_fraction", "train_time_s", *tier_lr_columns]
finished = compare.finished_runs(runs, METRIC)
finished[finished["role"] == "layerwise"].sort_values(METRIC, ascending=False)[
    [column for column in columns if column in finished]].head(10)

# %% [markdown]
# ## Configs over seeds

# %%
compare.comparison_table(runs, METRIC, n_boot=N_BOOT)

# %% [markdown]
# ## Plots

# %%
outputs = {
    output.name: output
    for output in plots.make_plots(runs, OUT_DIR, metric=METRIC, client=MlflowClient(TRACKING_URI), study=study,
                                   n_boot=N_BOOT)
}


def show(output: plots.PlotOutput) -> None:
    """Display a written plot, or print why it was skipped."""
    if output.path is None:
        print(f"Skipped {output.title}: {output.note}")
    else:
        display(Image(filename=str(output.path)))


# %%
show(outputs["tier_lrs"])

# %%
show(outputs["learning_curves"])

# %%
show(outputs["pareto"])

# %%
show(outputs["param_importances"])
