"""Seed statistics and paired comparisons against the full fine-tuning baseline.

A config is one (task, model, tier_config) group. Only FINISHED runs with a value for
the metric count. When a config has several runs with the same seed, their values are
averaged first, so every statistic is over seeds. docs/analysis.md states the exact
statistics.
"""

import logging

import numpy as np
import pandas as pd
from scipy import stats

from harness.errors import ConfigError

logger = logging.getLogger(__name__)

GROUP_KEYS = ["task", "model", "tier_config"]
# Comparisons over fewer seeds than this are flagged `underpowered`.
MIN_SEEDS = 3


def bootstrap_ci(values, *, n_boot: int = 10_000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Return the percentile bootstrap confidence interval of the mean of `values`.

    Draws `n_boot` resamples of len(values) with replacement from `numpy.random.default_rng(seed)`
    and returns the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of the resample
    means (numpy's linear interpolation). Returns (nan, nan) for no values.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return np.nan, np.nan

    rng = np.random.default_rng(seed)
    indices = rng.integers(0, values.size, size=(n_boot, values.size))
    means = values[indices].mean(axis=1)

    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def t_interval(values, *, confidence: float = 0.95) -> tuple[float, float]:
    """Return the Student-t confidence interval of the mean of `values` (nan for fewer than 2).

    NOTE: with 3 to 5 seeds the percentile bootstrap cannot reach past the smallest and largest
    value, so it comes out too narrow. Quote the t interval for so few seeds.
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return np.nan, np.nan
    half_width = stats.t.ppf((1.0 + confidence) / 2.0, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean() - half_width), float(values.mean() + half_width)


def finished_runs(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Return the FINISHED runs that have a value for `metric`."""
    if metric not in runs:
        raise ConfigError(
            f"metric {metric!r} is not logged by any of the {len(runs)} runs. Pick a logged metric "
            "such as best_val_metric or test_metric (docs/architecture.md lists them)."
        )
    return runs[(runs["status"] == "FINISHED") & runs[metric].notna()]


def seed_values(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Return one row per (config, seed) with the mean `value` of the config's FINISHED runs."""
    finished = finished_runs(runs, metric)
    usable = finished[finished["seed"].notna()]

    duplicated = usable.duplicated(subset=[*GROUP_KEYS, "seed"], keep=False)
    if duplicated.any():
        logger.warning("%d runs share a config and seed with another run; their %s values are averaged",
                       int(duplicated.sum()), metric)

    keys = [*GROUP_KEYS, "role", "strategy", "split", "seed"]
    return usable.groupby(keys, dropna=False, sort=True)[metric].mean().rename("value").reset_index()


def summarize(runs: pd.DataFrame, metric: str = "best_val_metric", *, n_boot: int = 10_000,
              confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Return per config: n_seeds, mean, std (ddof=1), bootstrap CI and the underpowered flag."""
    rows = []
    for keys, group in seed_values(runs, metric).groupby([*GROUP_KEYS, "role", "strategy", "split"],
                                                         dropna=False, sort=True):
        values = group["value"].to_numpy()
        ci_low, ci_high = bootstrap_ci(values, n_boot=n_boot, confidence=confidence, seed=seed)
        rows.append({
            **dict(zip([*GROUP_KEYS, "role", "strategy", "split"], keys)),
            "metric": metric,
            "n_seeds": len(values),
            "mean": values.mean(),
            "std": values.std(ddof=1) if len(values) > 1 else np.nan,
            "ci_low": ci_low,
            "ci_high": ci_high,
            "underpowered": len(values) < MIN_SEEDS,
        })
    columns = [*GROUP_KEYS, "role", "strategy", "split", "metric", "n_seeds", "mean", "std", "ci_low",
               "ci_high", "underpowered"]
    return pd.DataFrame(rows, columns=columns)


def pair_with_baselines(runs: pd.DataFrame, metric: str = "best_val_metric") -> pd.DataFrame:
    """Return one row per FINISHED layer-wise run with its baseline's value and `diff` = run - baseline.

    The baseline is the run named in `baseline_run_id`. When that run is not a FINISHED run in `runs`, it is
    the newest FINISHED baseline run with the same `baseline_key` (same model, task, data, seed
    and budget). Runs without a baseline keep `baseline_value` = NaN.
    """
    finished = finished_runs(runs, metric)
    layerwise = finished[finished["role"] == "layerwise"]
    baselines = finished[finished["role"] == "baseline"]

    by_id = baselines.set_index("run_id")[metric]
    by_key = baselines.sort_values("start_time").groupby("baseline_key")[["run_id", metric]].last()

    pairs = layerwise[[*GROUP_KEYS, "strategy", "split", "seed", "run_id", "baseline_run_id", "baseline_key",
                       metric]].rename(columns={metric: "value"})
    linked = pairs["baseline_run_id"].map(by_id)
    fallback_id = pairs["baseline_key"].map(by_key["run_id"])
    fallback_value = pairs["baseline_key"].map(by_key[metric])

    use_fallback = linked.isna() & fallback_value.notna()
    pairs["baseline_run_id"] = pairs["baseline_run_id"].where(~use_fallback, fallback_id)
    pairs["baseline_value"] = linked.where(~use_fallback, fallback_value)
    pairs["diff"] = pairs["value"] - pairs["baseline_value"]

    unpaired = int(pairs["baseline_value"].isna().sum())
    if unpaired:
        logger.warning("%d layer-wise runs have no FINISHED baseline with %s; they are left out of "
                       "the paired differences", unpaired, metric)
    return pairs.drop(columns=["baseline_key"]).reset_index(drop=True)


def compare_to_baseline(runs: pd.DataFrame, metric: str = "best_val_metric", *, n_boot: int = 10_000,
                        confidence: float = 0.95, seed: int = 0, maximize: bool = True) -> pd.DataFrame:
    """Return per layer-wise config the paired difference against the baseline over seeds.

    Columns: n_pairs, baseline_mean, mean (of the config on the paired seeds), mean_diff,
    std_diff, diff_ci_low/diff_ci_high (paired bootstrap CI: `bootstrap_ci` of the seed-level
    differences), diff_t_low/diff_t_high (`t_interval` of the same differences), win_rate (fraction of seeds where the config beats its baseline: diff > 0,
    or diff < 0 when `maximize` is False, ties count as losses) and underpowered.
    """
    pairs = pair_with_baselines(runs, metric).dropna(subset=["diff"])
    per_seed = pairs.groupby([*GROUP_KEYS, "strategy", "split", "seed"], dropna=False)[
        ["value", "baseline_value", "diff"]].mean().reset_index()

    rows = []
    for keys, group in per_seed.groupby([*GROUP_KEYS, "strategy", "split"], dropna=False, sort=True):
        diffs = group["diff"].to_numpy()
        ci_low, ci_high = bootstrap_ci(diffs, n_boot=n_boot, confidence=confidence, seed=seed)
        t_low, t_high = t_interval(diffs, confidence=confidence)
        wins = diffs > 0 if maximize else diffs < 0
        rows.append({
            **dict(zip([*GROUP_KEYS, "strategy", "split"], keys)),
            "metric": metric,
            "n_pairs": len(diffs),
            "baseline_mean": group["baseline_value"].mean(),
            "mean": group["value"].mean(),
            "mean_diff": diffs.mean(),
            "std_diff": diffs.std(ddof=1) if len(diffs) > 1 else np.nan,
            "diff_ci_low": ci_low,
            "diff_ci_high": ci_high,
            "diff_t_low": t_low,
            "diff_t_high": t_high,
            "win_rate": wins.mean(),
            "underpowered": len(diffs) < MIN_SEEDS,
        })
    columns = [*GROUP_KEYS, "strategy", "split", "metric", "n_pairs", "baseline_mean", "mean", "mean_diff",
               "std_diff", "diff_ci_low", "diff_ci_high", "diff_t_low", "diff_t_high", "win_rate", "underpowered"]
    return pd.DataFrame(rows, columns=columns)


def comparison_table(runs: pd.DataFrame, metric: str = "best_val_metric", *, n_boot: int = 10_000,
                     confidence: float = 0.95, seed: int = 0, maximize: bool = True) -> pd.DataFrame:
    """Join `summarize` and `compare_to_baseline`: one row per config, baselines first, best mean next.

    A config is underpowered when either its seed count or its paired seed count is below MIN_SEEDS.
    """
    summary = summarize(runs, metric, n_boot=n_boot, confidence=confidence, seed=seed)
    paired = compare_to_baseline(runs, metric, n_boot=n_boot, confidence=confidence, seed=seed,
                                 maximize=maximize)

    paired_columns = ["n_pairs", "mean_diff", "diff_ci_low", "diff_ci_high", "win_rate"]
    table = summary.merge(paired[[*GROUP_KEYS, *paired_columns, "underpowered"]], on=GROUP_KEYS, how="left",
                          suffixes=("", "_paired"))
    is_layerwise = table["role"] == "layerwise"
    table["underpowered"] = table["underpowered"] | (is_layerwise & table["underpowered_paired"].ne(False))
    table = table.drop(columns=["underpowered_paired"])
    table["n_pairs"] = table["n_pairs"].astype("Int64")

    table["is_baseline"] = table["role"] == "baseline"
    table = table.sort_values(["task", "model", "is_baseline", "mean"], ascending=[True, True, False, not maximize])
    return table.drop(columns=["is_baseline"]).reset_index(drop=True)


def pareto_front(runs: pd.DataFrame, metric: str, cost: str, *, maximize: bool = True) -> pd.Series:
    """Return a boolean Series: True for runs that no other run beats on `metric` at lower or equal `cost`.

    Runs missing either value are False.
    """
    on_front = pd.Series(False, index=runs.index)
    valid = runs[[metric, cost]].dropna()
    score = valid[metric].to_numpy(dtype=float) * (1.0 if maximize else -1.0)
    spend = valid[cost].to_numpy(dtype=float)

    # Entry [i, j] is True when run j dominates run i: at least as good on both axes, better on one.
    at_least_as_good = (score[None, :] >= score[:, None]) & (spend[None, :] <= spend[:, None])
    better_somewhere = (score[None, :] > score[:, None]) | (spend[None, :] < spend[:, None])
    dominated = (at_least_as_good & better_somewhere).any(axis=1)

    on_front[valid.index] = ~dominated
    return on_front
