"""Sweep efficiency: a grid over split points x per-tier lrs against TPE with median pruning.

Both sweeps fine-tune MiniLM-L6 (model=minilm_l6) on TREC with tier=two_tier over the same
discrete space: one split point and one lr per tier, each from a list of choices. The grid
runs every point; TPE runs a third as many trials and prunes poor ones after their first
epoch. The target: TPE reaches the grid's best validation accuracy within 0.5 points while
spending at most a third of the grid's compute (trial-epochs: validation epochs over all
trials, pruned ones included).

The full fine-tuning baseline runs once first and counts toward neither sweep. The last
line of the output is one JSON object; a full run also appends a section to
docs/benchmarks.md.

    python bench/sweep_efficiency.py                 # full: 48 grid trials + 16 TPE trials
    python bench/sweep_efficiency.py --quick         # smoke run of the pipeline, numbers mean nothing
    python bench/sweep_efficiency.py --device cuda --output-dir /tmp/sweep-bench
"""

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "trec"
BENCHMARKS_DOC = REPO / "docs" / "benchmarks.md"
RESULTS_FILE = "optimization_results.yaml"
# Accuracy is a fraction, so 0.5 points is 0.005.
TARGET_GAP = 0.005
TARGET_COMPUTE_FRACTION = 1 / 3

# The grid takes every split point from min(splits) to max(splits), so splits must be consecutive.
FULL = {
    "splits": [2, 3, 4],
    "lrs": [1.0e-5, 3.0e-5, 1.0e-4, 3.0e-4],
    "epochs": 3,
    "train_size": None,
}
# A smoke run: two grid points, one TPE trial, 64 training rows.
QUICK = {
    "splits": [3, 4],
    "lrs": [1.0e-4],
    "epochs": 2,
    "train_size": 64,
}


def sweep_config(name: str, settings: dict, sampler: str, n_trials: int) -> dict:
    """Return the sweep config (package _global_) that both sweeps share but for sampler and pruner."""
    sweeper = {
        "n_trials": n_trials,
        "study_name": name,
        "sampler": sampler,
        "seed": 0,
        "tiers": {
            "split": {"count": 1, "low": min(settings["splits"]), "high": max(settings["splits"])},
            "lrs": {"choices": settings["lrs"]},
        },
    }
    if sampler == "grid":
        sweeper["pruner"] = None
    else:
        sweeper["pruner"] = "median"
        # Prune from epoch 1 on, once 3 trials have finished; 5 random trials before TPE.
        sweeper["pruner_options"] = {"median": {"n_startup_trials": 3, "n_warmup_steps": 1}}
        sweeper["sampler_options"] = {"tpe": {"n_startup_trials": 5}}
    return {"defaults": [{"override /hydra/sweeper": "harness_optuna"}], "hydra": {"sweeper": sweeper}}


def write_sweep_configs(output_dir: Path, settings: dict, grid_trials: int, tpe_trials: int) -> Path:
    """Write conf/sweep/bench_grid.yaml and bench_tpe.yaml under output_dir; return the conf folder."""
    conf_dir = output_dir / "conf"
    (conf_dir / "sweep").mkdir(parents=True, exist_ok=True)
    for name, sampler, n_trials in (("bench_grid", "grid", grid_trials), ("bench_tpe", "tpe", tpe_trials)):
        text = "# @package _global_\n" + OmegaConf.to_yaml(OmegaConf.create(sweep_config(name, settings, sampler, n_trials)))
        (conf_dir / "sweep" / f"{name}.yaml").write_text(text)
    return conf_dir


def common_overrides(args, settings: dict, output_dir: Path) -> list[str]:
    overrides = [
        "model=minilm_l6",
        "task=trec",
        f"task.data_dir={args.data_dir}",
        "tier=two_tier",
        f"train.epochs={settings['epochs']}",
        f"train.device={args.device}",
        "train.progress_bar=false",
        "task.max_length=64",
        f"seed={args.seed}",
        f"tracking.root={output_dir}",
        "tracking.experiment=sweep-efficiency",
    ]
    if settings["train_size"] is not None:
        overrides.append(f"task.train_size={settings['train_size']}")
    return overrides


def run_logged(command: list[str], log_path: Path, cwd: Path) -> float:
    """Run `command`, write its output to `log_path`, and return its wall time in seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    # One intra-op thread: on small shared CPUs, torch's default thread count slowed MiniLM
    # training steps down (see bench/real_data.sh). Set OMP_NUM_THREADS to change it.
    env.setdefault("OMP_NUM_THREADS", "1")
    logger.info("Running %s (log: %s)", " ".join(command[2:]), log_path)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit status {result.returncode}; see {log_path}")
    return elapsed


def run_sweep(name: str, args, settings: dict, output_dir: Path, conf_dir: Path) -> dict:
    sweep_dir = output_dir / name
    command = [
        sys.executable, "-m", "harness.run", "-m", "--config-dir", str(conf_dir), f"sweep={name}",
        *common_overrides(args, settings, output_dir), f"hydra.sweep.dir={sweep_dir}",
    ]
    wall_s = run_logged(command, output_dir / f"{name}.log", output_dir)
    results = OmegaConf.to_container(OmegaConf.load(sweep_dir / RESULTS_FILE))
    best = results["best"]
    return {
        "trials": results["trials_complete"] + results["trials_pruned"] + results["trials_failed"],
        "trials_pruned": results["trials_pruned"],
        "trials_failed": results["trials_failed"],
        "trial_epochs": results["trial_epochs"],
        "wall_s": round(wall_s, 1),
        "best_val_metric": best["values"]["best_val_metric"],
        "best_overrides": best["overrides"],
        "best_mlflow_run_id": best["mlflow_run_id"],
    }


def best_test_metric(output_dir: Path, run_id: str) -> float | None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlruns.db'}")
    return client.get_run(run_id).data.metrics.get("test_metric")


def compare(grid: dict, tpe: dict) -> dict:
    gap = grid["best_val_metric"] - tpe["best_val_metric"]
    compute_fraction = tpe["trial_epochs"] / grid["trial_epochs"]
    return {
        "gap_points": round(100 * gap, 2),
        "compute_fraction": round(compute_fraction, 3),
        "wall_fraction": round(tpe["wall_s"] / grid["wall_s"], 3),
        "meets_target": gap <= TARGET_GAP and compute_fraction <= TARGET_COMPUTE_FRACTION,
    }


def append_to_doc(report: dict) -> None:
    grid, tpe, comparison = report["grid"], report["tpe"], report["comparison"]
    lines = [
        "",
        f"## Sweep efficiency: grid against TPE with pruning ({report['date']})",
        "",
        f"`python bench/sweep_efficiency.py` on {report['machine']}, device {report['device']}: "
        f"MiniLM-L6 on TREC, tier=two_tier, {report['epochs']} epochs, seed {report['seed']}. "
        f"Both sweeps search split {report['splits']} x lrs {report['lrs']} per tier.",
        "",
        "| sweep | trials | pruned | trial-epochs | wall time (s) | best val accuracy | its test accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in (("grid", grid), ("TPE + median pruning", tpe)):
        test = "n/a" if result["best_test_metric"] is None else f"{result['best_test_metric']:.4f}"
        lines.append(
            f"| {name} | {result['trials']} | {result['trials_pruned']} | {result['trial_epochs']} | "
            f"{result['wall_s']} | {result['best_val_metric']:.4f} | {test} |"
        )
    lines += [
        "",
        f"TPE reached the grid's best within {comparison['gap_points']} points with "
        f"{100 * comparison['compute_fraction']:.0f}% of its trial-epochs and "
        f"{100 * comparison['wall_fraction']:.0f}% of its wall time. Target (within 0.5 points with at "
        f"most a third of the trial-epochs): {'met' if comparison['meets_target'] else 'not met'}.",
        "",
    ]
    if not BENCHMARKS_DOC.exists():
        BENCHMARKS_DOC.write_text("# Benchmarks\n", encoding="utf-8")
    with open(BENCHMARKS_DOC, "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 grid points, 1 TPE trial, 64 training rows, 2 epochs; does not write docs/benchmarks.md")
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "bench" / f"sweep_efficiency-{datetime.now():%Y%m%d-%H%M%S}", help="folder for the MLflow store, sweep folders and logs (default: outputs/bench/sweep_efficiency-<time>)")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="TREC folder with train.csv, validation.csv and test.csv")
    parser.add_argument("--device", default="auto", help="train.device: auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every run")
    parser.add_argument("--tpe-trials", type=int, default=None, help="TPE budget in trials (default: a third of the grid, at least 1)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    output_dir = args.output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    args.data_dir = args.data_dir.resolve()

    grid_trials = len(settings["splits"]) * len(settings["lrs"]) ** 2
    tpe_trials = args.tpe_trials or max(1, grid_trials // 3)
    conf_dir = write_sweep_configs(output_dir, settings, grid_trials, tpe_trials)

    # The baseline first, so that neither sweep pays for it.
    baseline_command = [sys.executable, "-m", "harness.run", *common_overrides(args, settings, output_dir), "tier=full",
                        f"hydra.run.dir={output_dir / 'baseline'}"]
    baseline_s = run_logged(baseline_command, output_dir / "baseline.log", output_dir)

    grid = run_sweep("bench_grid", args, settings, output_dir, conf_dir)
    tpe = run_sweep("bench_tpe", args, settings, output_dir, conf_dir)
    for result in (grid, tpe):
        result["best_test_metric"] = best_test_metric(output_dir, result["best_mlflow_run_id"])

    report = {
        "benchmark": "sweep_efficiency",
        "quick": args.quick,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "device": args.device,
        "epochs": settings["epochs"],
        "train_size": settings["train_size"],
        "seed": args.seed,
        "splits": settings["splits"],
        "lrs": settings["lrs"],
        "baseline_wall_s": round(baseline_s, 1),
        "grid": grid,
        "tpe": tpe,
        "comparison": compare(grid, tpe),
        "output_dir": str(output_dir),
    }
    if not args.quick:
        append_to_doc(report)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
