"""Train throughput side by side in one process: harness loop, HF Trainer, frozen tiers, activation cache.

Every configuration trains all-MiniLM-L6-v2 (6 blocks) on the same batches of an SST-2 subset
(batch size 32, max length 128, dynamic padding, one fixed shuffled order). The repeats run the
configurations in turn, so a slow spell of the machine hits all of them. Each repeat times one
epoch of `--steps` steps and leaves out the first two steps, which include set-up and warm-up.
The cached configuration trains two epochs and times the second.

    python bench/throughput.py            # the numbers in docs/benchmarks.md
    python bench/throughput.py --quick    # a smoke run in under a minute; its numbers mean little

The last line of the output is a JSON object with the medians and ratios.
"""

import argparse
import logging

import torch
from common import (
    BATCH_SIZE, MODEL, Clock, describe_machine, median, print_result, setup_device, spread, sst2_task, train_config,
)

from harness import activation_cache, models
from harness.data import load_task, make_loader, tokenize_task
from harness.experiment import set_seed
from harness.tiers import build_plan
from harness.train import train

NUM_BLOCKS = 6
LR = 2e-5
WEIGHT_DECAY = 0.01
SKIPPED_STEPS = 2


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 3 steps at batch size 8")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of every configuration")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 3, 1
    args.batch_size = 8 if args.quick else BATCH_SIZE
    return args


def load_data(args):
    """Tokenize the SST-2 subset with the MiniLM tokenizer and fix one shuffled order."""
    task_cfg = sst2_task(train_size=args.steps * args.batch_size)
    tokenizer = models.load_tokenizer(MODEL)
    tokenized = tokenize_task(load_task(task_cfg), tokenizer, task_cfg)
    train_data = tokenized["train"].shuffle(seed=0).flatten_indices()
    validation = tokenized["validation"].select(range(args.batch_size))
    return tokenizer, train_data, validation


def new_model(tokenizer):
    set_seed(0)
    return models.load_model(MODEL, 2, ["negative", "positive"], tokenizer)


def harness_step_times(args, data, device, tier, epochs=1, **speed):
    """Train with harness.train.train and return the seconds of each timed step of the last epoch."""
    tokenizer, train_data, validation = data
    model = new_model(tokenizer)
    plan = build_plan(model, tier, weight_decay=WEIGHT_DECAY)
    loaders = {
        "train": make_loader(train_data, tokenizer, args.batch_size, shuffle=False),
        "validation": make_loader(validation, tokenizer, 64, shuffle=False),
    }
    clock = Clock(device)
    stamps = [clock.now()]
    activation_cache.clear()
    set_seed(0)
    train(model, plan, loaders, train_config(device, epochs=epochs, batch_size=args.batch_size, **speed), "accuracy",
          on_log=lambda step, loss, lrs: stamps.append(clock.now()))
    times = [after - before for before, after in zip(stamps, stamps[1:])]
    return times[(epochs - 1) * args.steps + SKIPPED_STEPS:]


def trainer_step_times(args, data, device):
    """Train with the HF Trainer on the same batches and return the seconds of each timed step."""
    from torch.utils.data import SequentialSampler
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    tokenizer, train_data, _ = data
    clock = Clock(device)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.stamps = []

        def on_step_begin(self, args_, state, control, **kwargs):
            if not self.stamps:
                self.stamps.append(clock.now())

        def on_step_end(self, args_, state, control, **kwargs):
            self.stamps.append(clock.now())

    class SameOrderTrainer(Trainer):
        # The harness configurations read the batches in dataset order, so this one does too.
        def _get_train_sampler(self, *args_, **kwargs):
            return SequentialSampler(self.train_dataset)

    step_clock = StepClock()
    training_args = TrainingArguments(
        output_dir="/tmp/bench-trainer", per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=LR, weight_decay=WEIGHT_DECAY, warmup_steps=0, lr_scheduler_type="linear", max_grad_norm=1.0,
        report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        use_cpu=device.type == "cpu", bf16=device.type == "cuda", dataloader_num_workers=0, seed=0,
    )
    trainer = SameOrderTrainer(
        model=new_model(tokenizer), args=training_args, train_dataset=train_data,
        data_collator=DataCollatorWithPadding(tokenizer), callbacks=[step_clock],
    )
    trainer.train()
    times = [after - before for before, after in zip(step_clock.stamps, step_clock.stamps[1:])]
    return times[SKIPPED_STEPS:]


@torch.no_grad()
def forward_step_times(args, data, device):
    """Return the seconds of plain forward passes (eval mode, padded) over the same batches."""
    tokenizer, train_data, _ = data
    model = new_model(tokenizer).to(device).eval()
    clock = Clock(device)
    times = []
    for batch in make_loader(train_data, tokenizer, args.batch_size, shuffle=False):
        batch = {key: value.to(device) for key, value in batch.items()}
        start = clock.now()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            model(**batch)
        times.append(clock.now() - start)
    return times[SKIPPED_STEPS:]


def frozen(split):
    return {"strategy": "tiers", "split": split, "lrs": [0.0, LR]}


def configurations(args, data, device):
    full = {"strategy": "full", "lr": LR}
    return {
        "trainer_full": lambda: trainer_step_times(args, data, device),
        "harness_full_padded": lambda: harness_step_times(args, data, device, full, unpad=False),
        "harness_full": lambda: harness_step_times(args, data, device, full),
        "harness_frozen2": lambda: harness_step_times(args, data, device, frozen(2), activation_cache=False),
        "harness_frozen4": lambda: harness_step_times(args, data, device, frozen(4), activation_cache=False),
        "harness_frozen4_padded": lambda: harness_step_times(
            args, data, device, frozen(4), activation_cache=False, unpad=False),
        "harness_frozen4_cached": lambda: harness_step_times(args, data, device, frozen(4), epochs=2),
        "forward_only": lambda: forward_step_times(args, data, device),
    }


def ideal_speedup(frozen_blocks: int, num_blocks: int = NUM_BLOCKS) -> float:
    """Step-time ratio if a block's backward costs two forwards and frozen blocks skip it: 3L / (k + 3(L - k))."""
    return 3 * num_blocks / (frozen_blocks + 3 * (num_blocks - frozen_blocks))


def main():
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = setup_device(args.device, args.threads)
    data = load_data(args)
    runs = configurations(args, data, device)

    # Seconds per training sample, one value per repeat and configuration.
    per_sample = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            times = run()
            per_sample[name].append(sum(times) / (len(times) * args.batch_size))
            print(f"repeat {repeat} {name}: {args.batch_size / median(times):.1f} samples/s", flush=True)

    seconds = {name: median(values) for name, values in per_sample.items()}
    samples_per_s = {name: 1 / value for name, value in seconds.items()}
    ratios = {
        "harness_vs_trainer": seconds["trainer_full"] / seconds["harness_full"],
        "harness_padded_vs_trainer": seconds["trainer_full"] / seconds["harness_full_padded"],
        "frozen2_speedup": seconds["harness_full"] / seconds["harness_frozen2"],
        "frozen4_speedup": seconds["harness_full"] / seconds["harness_frozen4"],
        "frozen4_padded_speedup": seconds["harness_full_padded"] / seconds["harness_frozen4_padded"],
        "cached_epoch_speedup": seconds["harness_full"] / seconds["harness_frozen4_cached"],
    }
    ratios["frozen2_of_ideal"] = ratios["frozen2_speedup"] / ideal_speedup(2)
    ratios["frozen4_of_ideal"] = ratios["frozen4_speedup"] / ideal_speedup(4)
    ratios["frozen4_padded_of_ideal"] = ratios["frozen4_padded_speedup"] / ideal_speedup(4)

    print("\nsamples/s per configuration: median [min, max] of the repeats")
    for name, values in per_sample.items():
        print(f"  {name:24s} {spread([1 / value for value in values])}")
    print_result("throughput", {
        "machine": describe_machine(device), "steps": args.steps, "repeats": args.repeats,
        "batch_size": args.batch_size, "samples_per_s": samples_per_s, "ratios": ratios,
        "ideal": {"frozen2": ideal_speedup(2), "frozen4": ideal_speedup(4)},
    })


if __name__ == "__main__":
    main()
