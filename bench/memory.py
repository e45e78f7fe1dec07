"""Peak training memory of frozen tiers against full fine-tuning, each configuration in a fresh process.

A child process builds all-MiniLM-L6-v2 and an SST-2 subset, then trains `--steps` steps with
`harness.train.train`. It reports the memory that training adds on top of the loaded model and
data: on the CPU the peak resident set size sampled every millisecond minus the size at the
start of training, on CUDA `torch.cuda.max_memory_allocated` minus the memory allocated before.
That covers gradients, optimizer state, activations and the activation cache.

    python bench/memory.py            # the numbers in docs/benchmarks.md
    python bench/memory.py --quick    # a smoke run in under a minute; its numbers mean little

The last line of the output is a JSON object with the medians and ratios.
"""

import argparse
import json
import subprocess
import sys
import threading
import time

from common import BATCH_SIZE, MODEL, describe_machine, median, print_result, setup_device, spread, sst2_task, train_config

CONFIGS = {
    "full": ({"strategy": "full", "lr": 2e-5}, {}),
    "frozen4": ({"strategy": "tiers", "split": 4, "lrs": [0.0, 2e-5]}, {"activation_cache": False}),
    "frozen4_cached": ({"strategy": "tiers", "split": 4, "lrs": [0.0, 2e-5]}, {"activation_cache": True}),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 2 steps")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per child process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 2, 1
    return args


class PeakRss:
    """Sample the resident set size of this process in a background thread and keep the maximum."""

    def __init__(self):
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.001)

    def stop(self) -> int:
        self._running = False
        self._thread.join()
        return self.peak


def measure_child(args) -> dict:
    """Train one configuration and return the memory that training added, in MiB."""
    import torch

    from harness import models
    from harness.data import load_task, make_loader, tokenize_task
    from harness.experiment import set_seed
    from harness.tiers import build_plan
    from harness.train import train

    device = setup_device(args.device, args.threads)
    task_cfg = sst2_task(train_size=args.steps * BATCH_SIZE)
    tokenizer = models.load_tokenizer(MODEL)
    tokenized = tokenize_task(load_task(task_cfg), tokenizer, task_cfg)
    loaders = {
        "train": make_loader(tokenized["train"].shuffle(seed=0), tokenizer, BATCH_SIZE, shuffle=False),
        "validation": make_loader(tokenized["validation"].select(range(64)), tokenizer, 64, shuffle=False),
    }
    set_seed(0)
    model = models.load_model(MODEL, 2, ["negative", "positive"], tokenizer).to(device)
    tier, speed = CONFIGS[args.child]
    plan = build_plan(model, tier, weight_decay=0.01)
    cfg = train_config(device, epochs=1, **speed)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = train(model, plan, loaders, cfg, "accuracy")
        added = torch.cuda.max_memory_allocated(device) - before
    else:
        import psutil

        before = psutil.Process().memory_info().rss
        sampler = PeakRss()
        result = train(model, plan, loaders, cfg, "accuracy")
        added = sampler.stop() - before
    return {"added_mb": added / 2**20, "activation_cache_mb": result.activation_cache_mb,
            "machine": describe_machine(device)}


def run_child(args, name) -> dict:
    command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--device", args.device,
               "--threads", str(args.threads)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    args = parse_args()
    if args.child:
        print(json.dumps(measure_child(args)))
        return

    added = {name: [] for name in CONFIGS}
    cache_mb = {}
    for repeat in range(args.repeats):
        for name in CONFIGS:
            child = run_child(args, name)
            added[name].append(child["added_mb"])
            cache_mb[name] = child["activation_cache_mb"]
            machine = child["machine"]
            print(f"repeat {repeat} {name}: {child['added_mb']:.0f} MiB added by training", flush=True)

    print("\nMiB added by training: median [min, max] of the repeats")
    for name, values in added.items():
        print(f"  {name:16s} {spread(values)}")
    medians = {name: median(values) for name, values in added.items()}
    print_result("memory", {
        "machine": machine, "steps": args.steps, "repeats": args.repeats, "added_mb": medians,
        "activation_cache_mb": cache_mb,
        "ratios": {
            "frozen4_vs_full": medians["frozen4"] / medians["full"],
            "frozen4_cached_vs_full": medians["frozen4_cached"] / medians["full"],
        },
    })


if __name__ == "__main__":
    main()
