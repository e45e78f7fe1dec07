"""Sweep efficiency: a grid over split points x per-tier lrs against TPE with median pruning.

All sweeps fine-tune MiniLM-L6 (model=minilm_l6) on TREC with tier=two_tier over the same
discrete space: one split point and one lr per tier, each from a list of choices. The grid
runs every point. TPE runs a third as many trials and prunes poor ones after their first
epoch, once per sampler seed, because one TPE study is one draw. The target: TPE reaches
the grid's best validation accuracy within 0.5 points while spending at most a third of the
grid's compute (trial-epochs: validation epochs over all trials, pruned ones included).
Wall time and CPU time of each sweep are reported beside trial-epochs.

The full fine-tuning baseline runs once first and counts toward no sweep. The last line of
the output is one JSON object, and a full run also appends a section to docs/benchmarks.md.
Rerunning with the same --output-dir resumes the studies (only their missing trials run).
NOTE: a rerun trains the baseline again, and its wall and CPU times cover only the rerun.

    python bench/sweep_efficiency.py                 # full: 48 grid trials + 16 TPE trials per seed
    python bench/sweep_efficiency.py --quick         # smoke run of the pipeline, numbers mean nothing
    python bench/sweep_efficiency.py --device cuda --output-dir /tmp/sweep-bench
"""

import argparse
import json
import logging
import os
import platform
import resource
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
    # 1,000 of TREC's 4,906 training rows keep the grid near 47 CPU minutes (one core).
    "train_size": 1000,
}
# A smoke run: two grid points, one TPE trial, 64 training rows.
QUICK = {
    "splits": [3, 4],
    "lrs": [1.0e-4],
    "epochs": 2,
    "train_size": 64,
}


def sweep_config(name: str, settings: dict, sampler: str, n_trials: int, sampler_seed: int = 0) -> dict:
    """Return the sweep config (package _global_) that all sweeps share but for sampler, seed and pruner."""
    sweeper = {
        "n_trials": n_trials,
        "study_name": name,
        "sampler": sampler,
        "seed": sampler_seed,
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


def write_sweep_configs(output_dir: Path, settings: dict, grid_trials: int, tpe_trials: int, tpe_seeds: list[int]) -> Path:
    """Write conf/sweep/bench_grid.yaml and one bench_tpe_s<seed>.yaml per TPE seed under output_dir."""
    conf_dir = output_dir / "conf"
    (conf_dir / "sweep").mkdir(parents=True, exist_ok=True)
    sweeps = [("bench_grid", "grid", grid_trials, 0)]
    sweeps += [(f"bench_tpe_s{seed}", "tpe", tpe_trials, seed) for seed in tpe_seeds]
    for name, sampler, n_trials, seed in sweeps:
        config = sweep_config(name, settings, sampler, n_trials, seed)
        text = "# @package _global_\n" + OmegaConf.to_yaml(OmegaConf.create(config))
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


def run_logged(command: list[str], log_path: Path, cwd: Path) -> tuple[float, float]:
    """Run `command`, write its output to `log_path`, and return its wall and CPU time in seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    # One intra-op thread: on small shared CPUs, torch's default thread count slowed MiniLM
    # training steps down (see bench/real_data.sh). Set OMP_NUM_THREADS to change it.
    env.setdefault("OMP_NUM_THREADS", "1")
    logger.info("Running %s (log: %s)", " ".join(command[2:]), log_path)
    cpu_before = _children_cpu_s()
    start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        result = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit status {result.returncode}; see {log_path}")
    return elapsed, _children_cpu_s() - cpu_before


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_sweep(name: str, args, settings: dict, output_dir: Path, conf_dir: Path) -> dict:
    sweep_dir = output_dir / name
    command = [
        sys.executable, "-m", "harness.run", "-m", "--config-dir", str(conf_dir), f"sweep={name}",
        *common_overrides(args, settings, output_dir), f"hydra.sweep.dir={sweep_dir}",
    ]
    wall_s, cpu_s = run_logged(command, output_dir / f"{name}.log", output_dir)
    results = OmegaConf.to_container(OmegaConf.load(sweep_dir / RESULTS_FILE))
    best = results["best"]
    return {
        "trials": results["trials_complete"] + results["trials_pruned"] + results["trials_failed"],
        "trials_pruned": results["trials_pruned"],
        "trials_failed": results["trials_failed"],
        "trial_epochs": results["trial_epochs"],
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "best_val_metric": best["values"]["best_val_metric"],
        "best_overrides": best["overrides"],
        "best_mlflow_run_id": best["mlflow_run_id"],
        "best_so_far": best_so_far(output_dir, name),
    }


def best_so_far(output_dir: Path, study_name: str) -> list[list]:
    """Return [trial-epochs spent, best validation metric so far] after each finished trial, in finishing order."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{output_dir / 'optuna.db'}")
    finished = sorted((trial for trial in study.get_trials(deepcopy=False) if trial.state.is_finished()),
                      key=lambda trial: trial.datetime_complete)
    spent, best, points = 0, None, []
    for trial in finished:
        spent += len(trial.intermediate_values)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            best = trial.value if best is None else max(best, trial.value)
        points.append([spent, best])
    return points


def best_within(points: list[list], budget: int) -> float | None:
    """Return the best validation metric a sweep had reached once it had spent at most `budget` trial-epochs."""
    reached = [best for spent, best in points if spent <= budget and best is not None]
    return reached[-1] if reached else None


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
        "cpu_fraction": round(tpe["cpu_s"] / grid["cpu_s"], 3),
        "meets_target": gap <= TARGET_GAP and compute_fraction <= TARGET_COMPUTE_FRACTION,
    }


def append_to_doc(report: dict) -> None:
    grid = report["grid"]
    lines = [
        "",
        f"## Sweep efficiency: grid against TPE with pruning ({report['date']})",
        "",
        f"`python bench/sweep_efficiency.py` on {report['machine']}, device {report['device']}: "
        f"MiniLM-L6 on TREC ({report['train_size']} training rows, all 546 validation rows), tier=two_tier, "
        f"{report['epochs']} epochs, training seed {report['seed']}. "
        f"Every sweep searches split {report['splits']} x lrs {report['lrs']} per tier.",
        "",
        "| sweep | trials | pruned | trial-epochs | wall time (s) | CPU time (s) | best val accuracy | its test accuracy | below grid best (points) | trial-epochs / grid |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("grid", grid, None)]
    rows += [(f"TPE + median pruning, sampler seed {seed}", tpe, report["comparisons"][seed]) for seed, tpe in report["tpe"].items()]
    for name, result, comparison in rows:
        test = "n/a" if result["best_test_metric"] is None else f"{result['best_test_metric']:.4f}"
        gap = "" if comparison is None else f"{comparison['gap_points']:+.2f}"
        fraction = "" if comparison is None else f"{comparison['compute_fraction']:.3f}"
        lines.append(
            f"| {name} | {result['trials']} | {result['trials_pruned']} | {result['trial_epochs']} | "
            f"{result['wall_s']} | {result['cpu_s']} | {result['best_val_metric']:.4f} | {test} | {gap} | {fraction} |"
        )
    checkpoints = [grid["trial_epochs"] * fraction // 12 for fraction in (2, 4, 6, 12)]
    lines += [
        "",
        "Best validation accuracy reached within a compute budget (trial-epochs; the grid's total is "
        f"{grid['trial_epochs']}):",
        "",
        "| sweep | " + " | ".join(f"<= {budget}" for budget in checkpoints) + " |",
        "|---|" + "---|" * len(checkpoints),
    ]
    for name, result, _ in rows:
        cells = [best_within(result["best_so_far"], budget) for budget in checkpoints]
        lines.append(f"| {name} | " + " | ".join("n/a" if cell is None else f"{cell:.4f}" for cell in cells) + " |")
    met = sum(comparison["meets_target"] for comparison in report["comparisons"].values())
    lines += [
        "",
        f"Target (within 0.5 points of the grid's best with at most a third of its trial-epochs): met by "
        f"{met} of {len(report['comparisons'])} TPE studies.",
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
    parser.add_argument("--tpe-seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds, one TPE study each (default: 0 1 2; --quick uses the first)")
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
    tpe_seeds = args.tpe_seeds[:1] if args.quick else args.tpe_seeds
    conf_dir = write_sweep_configs(output_dir, settings, grid_trials, tpe_trials, tpe_seeds)

    # The baseline first, so that no sweep pays for it.
    baseline_command = [sys.executable, "-m", "harness.run", *common_overrides(args, settings, output_dir), "tier=full",
                        f"hydra.run.dir={output_dir / 'baseline'}"]
    baseline_s, _ = run_logged(baseline_command, output_dir / "baseline.log", output_dir)

    grid = run_sweep("bench_grid", args, settings, output_dir, conf_dir)
    tpe = {seed: run_sweep(f"bench_tpe_s{seed}", args, settings, output_dir, conf_dir) for seed in tpe_seeds}
    for result in (grid, *tpe.values()):
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
        "comparisons": {seed: compare(grid, result) for seed, result in tpe.items()},
        "output_dir": str(output_dir),
    }
    if not args.quick:
        append_to_doc(report)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
