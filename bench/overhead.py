"""Fixed overhead of a run: `python -m harness.run dry_run=true`, its imports, and repeated loads in one process.

- dry run: wall seconds of the default config (MiniLM, BBC News) in a fresh process: import,
  compose, load and tokenize the data, load the model, build the tier plan. The first run
  tokenizes into an empty cache folder; the later ones read that cache.
- imports: cumulative seconds of the heaviest packages that `import harness.run` pulls in,
  from `python -X importtime`.
- in process: seconds of the second tokenizer and model load of a multirun job (cached), against
  the first and against a second load with the cache cleared.

    python bench/overhead.py            # the numbers in docs/benchmarks.md
    python bench/overhead.py --quick    # one dry run; its numbers mean little

The last line of the output is a JSON object with the medians.
"""

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

from common import MODEL, REPO, median, print_result, spread

PACKAGES = ("torch", "transformers", "datasets", "mlflow", "hydra", "optuna", "sklearn", "pandas", "harness.run")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one dry run, one import profile")
    parser.add_argument("--repeats", type=int, default=4, help="dry runs; the first fills the tokenization cache")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    return args


def dry_run_seconds(cache_dir: str, output_dir: str) -> tuple[float, float]:
    """Return the wall seconds and the CPU seconds of one dry run in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HARNESS_CACHE_DIR": cache_dir}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "harness.run", "dry_run=true", f"hydra.run.dir={output_dir}"],
        cwd=output_dir, env=env, check=True, capture_output=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_seconds() -> dict:
    """Return the cumulative import seconds of each top-level package in PACKAGES."""
    output = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import harness.run"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stderr
    seconds = {}
    for line in output.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match and match.group(3) in PACKAGES:
            seconds[match.group(3)] = max(seconds.get(match.group(3), 0.0), int(match.group(1)) / 1e6)
    return seconds


def load_seconds() -> dict:
    """Return the seconds of a first load of the tokenizer and model, a cached second one, and one without the cache."""
    from harness import models

    seconds = {}
    for attempt in ("first", "second", "second_without_cache"):
        if attempt == "second_without_cache":
            models.clear_cache()
        start = time.perf_counter()
        tokenizer = models.load_tokenizer(MODEL)
        models.load_model(MODEL, 2, ["negative", "positive"], tokenizer)
        seconds[attempt] = time.perf_counter() - start
    return seconds


def main():
    args = parse_args()
    cache_dir = tempfile.mkdtemp(prefix="bench-overhead-cache-")
    output_dir = tempfile.mkdtemp(prefix="bench-overhead-out-")

    dry_runs, dry_run_cpu = [], []
    for repeat in range(args.repeats):
        wall, cpu = dry_run_seconds(cache_dir, output_dir)
        dry_runs.append(wall)
        dry_run_cpu.append(cpu)
        print(f"dry run {repeat}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    imports = import_seconds()
    loads = load_seconds()

    print(f"\ndry run, first (tokenizes): {dry_runs[0]:.1f} s wall, {dry_run_cpu[0]:.1f} s CPU")
    if len(dry_runs) > 1:
        print(f"dry run, cached tokens: {spread(dry_runs[1:])} s wall, {spread(dry_run_cpu[1:])} s CPU")
    print("import seconds: " + ", ".join(f"{name} {value:.2f}" for name, value in sorted(imports.items(), key=lambda i: -i[1])))
    print(f"tokenizer and model load in one process: first {loads['first']:.2f} s, second {loads['second']:.2f} s, "
          f"second without the cache {loads['second_without_cache']:.2f} s")
    print_result("overhead", {
        "dry_run_first_s": dry_runs[0], "dry_run_cached_s": median(dry_runs[1:]) if len(dry_runs) > 1 else None,
        "dry_run_cached_cpu_s": median(dry_run_cpu[1:]) if len(dry_runs) > 1 else None,
        "dry_runs_s": dry_runs, "dry_runs_cpu_s": dry_run_cpu,
        "import_s": imports, "load_s": loads,
    })


if __name__ == "__main__":
    main()
