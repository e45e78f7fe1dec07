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
# # Layer-wise vs full fine-tuning
#
# Compares every layer-wise config with the full fine-tuning baseline of the same seed. The
# tables give mean and standard deviation over seeds, 95% bootstrap CIs, paired differences and
# win rates. The plots show the metric against the split point, the Pareto fronts and the weight
# drift per depth.
# docs/analysis.md states the statistics.
#
# Set the source with environment variables before starting Jupyter (or edit the next cell):
#
# - `HARNESS_TRACKING_URI`: MLflow tracking URI (default `sqlite:///mlruns.db`)
# - `HARNESS_EXPERIMENT`: experiment name (default `layerwise`), or
#   `HARNESS_PARENT_RUN`: the run id of a sweep's parent run
# - `HARNESS_METRIC`: the metric to compare (default `best_val_metric`)
# - `HARNESS_OUT_DIR`: where the plots are written (default `analysis_out/layerwise_vs_full`)
# - `HARNESS_N_BOOT`: bootstrap resamples per CI (default 10000)

# %%
import os
from pathlib import Path

from IPython.display import Image, display

from analysis import compare, plots
from analysis.load import load_runs

TRACKING_URI = os.environ.get("HARNESS_TRACKING_URI", "sqlite:///mlruns.db")
PARENT_RUN = os.environ.get("HARNESS_PARENT_RUN") or None
EXPERIMENT = None if PARENT_RUN else os.environ.get("HARNESS_EXPERIMENT", "layerwise")
METRIC = os.environ.get("HARNESS_METRIC", "best_val_metric")
OUT_DIR = Path(os.environ.get("HARNESS_OUT_DIR", "analysis_out/layerwise_vs_full"))
N_BOOT = int(os.environ.get("HARNESS_N_BOOT", "10000"))

# %%
runs = load_runs(TRACKING_URI, experiment=EXPERIMENT, parent_run_id=PARENT_RUN)
runs.groupby(["role", "status"], dropna=False).size()

# %% [markdown]
# ## Configs over seeds
#
# One row per (task, model, tier_config). `mean_diff` is the mean paired difference against the
# baseline with the same seed, and `win_rate` is the fraction of seeds where the config beats it.
# Configs with fewer than 3 seeds are marked `underpowered`.

# %%
table = compare.comparison_table(runs, METRIC, n_boot=N_BOOT)
table

# %% [markdown]
# ## Paired differences per seed

# %%
pairs = compare.pair_with_baselines(runs, METRIC)
pairs.sort_values(["tier_config", "seed"])

# %% [markdown]
# ## Plots

# %%
outputs = {output.name: output for output in plots.make_plots(runs, OUT_DIR, metric=METRIC, n_boot=N_BOOT)}


def show(output: plots.PlotOutput) -> None:
    """Display a written plot, or print why it was skipped."""
    if output.path is None:
        print(f"Skipped {output.title}: {output.note}")
    else:
        display(Image(filename=str(output.path)))


# %%
show(outputs["metric_vs_split"])

# %%
show(outputs["pareto"])

# %%
show(outputs["drift"])
