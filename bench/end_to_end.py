"""End-to-end time of a two-tier run: the harness against the recipe a user would otherwise copy.

Both start from the same SST-2 subset (the harness's `load_task`) and end with the validation
metrics of the last epoch, with the same model, tiers, learning rates, batch size and epochs:

- recipe: the `run_glue.py` pattern of transformers' examples: tokenize with
  `padding="max_length"` (128), the HF Trainer with a custom AdamW over two tiers of param
  groups (bottom: embeddings and blocks 0-3 at 2e-5, top: blocks 4-5 and head at 1e-4, each
  with and without weight decay) passed through `optimizers=`, evaluation every epoch;
- harness: `tokenize_task` (a fresh tokenization cache each repeat, so tokenizing is timed),
  `load_model`, `build_plan` with `conf/tier/two_tier.yaml`, and `harness.train.train` with
  dynamic padding, token unpadding and, in `harness_grouped`, `train.group_by_length=true`.

    python bench/end_to_end.py            # the numbers in docs/benchmarks.md
    python bench/end_to_end.py --quick    # a smoke run in under a minute; its numbers mean little

The last line of the output is a JSON object with the medians and ratios.
"""

import argparse
import logging
import os
import tempfile
import time

import numpy as np
from common import (
    BATCH_SIZE, MAX_LENGTH, MODEL, REPO, Clock, describe_machine, median, print_result, setup_device, spread,
    sst2_task, train_config,
)
from omegaconf import OmegaConf

from harness import activation_cache, models
from harness.data import load_task, make_loader, tokenize_task
from harness.experiment import set_seed
from harness.tiers import build_plan
from harness.train import train

BOTTOM_LR, TOP_LR, WEIGHT_DECAY = 2e-5, 1e-4, 0.01
SPLIT = 4


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 training rows, 32 validation rows, 1 epoch, 1 repeat")
    parser.add_argument("--train-size", type=int, default=640)
    parser.add_argument("--validation-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    args = parser.parse_args()
    if args.quick:
        args.train_size, args.validation_size, args.epochs, args.repeats = 32, 32, 1, 1
    return args


def run_harness(raw, task_cfg, device, epochs, group_by_length):
    """Tokenize, build and train a two-tier run as `harness.run` does (without MLflow)."""
    os.environ["HARNESS_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-cache-")
    models.clear_cache()
    activation_cache.clear()

    tokenizer = models.load_tokenizer(MODEL)
    tokenized = tokenize_task(raw, tokenizer, task_cfg)
    set_seed(0)
    model = models.load_model(MODEL, 2, ["negative", "positive"], tokenizer)
    tier = OmegaConf.load(REPO / "conf" / "tier" / "two_tier.yaml")
    tier.lrs = [BOTTOM_LR, TOP_LR]
    plan = build_plan(model, tier, weight_decay=WEIGHT_DECAY)
    loaders = {
        "train": make_loader(tokenized["train"], tokenizer, BATCH_SIZE, shuffle=True, seed=0),
        "validation": make_loader(tokenized["validation"], tokenizer, 64, shuffle=False, seed=0),
    }

    set_seed(0)
    cfg = train_config(device, epochs=epochs, warmup_ratio=0.1, log_every=10, group_by_length=group_by_length)
    result = train(model, plan, loaders, cfg, "accuracy")
    return result.final["accuracy"]


def tier_param_groups(model):
    """Two tiers by parameter name, each split into weight decay and no weight decay, as users write them."""
    bottom = ("bert.embeddings.",) + tuple(f"bert.encoder.layer.{i}." for i in range(SPLIT))
    no_decay = ("bias", "LayerNorm.weight")
    groups = []
    for lr, in_tier in ((BOTTOM_LR, lambda n: n.startswith(bottom)), (TOP_LR, lambda n: not n.startswith(bottom))):
        params = [(n, p) for n, p in model.named_parameters() if in_tier(n)]
        groups.append({"params": [p for n, p in params if not n.endswith(no_decay)], "lr": lr, "weight_decay": WEIGHT_DECAY})
        groups.append({"params": [p for n, p in params if n.endswith(no_decay)], "lr": lr, "weight_decay": 0.0})
    return groups


def run_recipe(raw, device, epochs):
    """Tokenize to max length and train with the HF Trainer and custom param groups (run_glue pattern)."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments, default_data_collator,
        get_scheduler,
    )

    source = models.resolve_pretrained(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(source)

    def preprocess(examples):
        return tokenizer(examples["text"], padding="max_length", max_length=MAX_LENGTH, truncation=True)

    tokenized = raw.map(preprocess, batched=True, remove_columns=["text"], load_from_cache_file=False)
    set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)

    steps = epochs * -(-len(tokenized["train"]) // BATCH_SIZE)
    optimizer = torch.optim.AdamW(tier_param_groups(model), lr=BOTTOM_LR)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(0.1 * steps), num_training_steps=steps)

    def accuracy(prediction):
        return {"accuracy": float(np.mean(np.argmax(prediction.predictions, -1) == prediction.label_ids))}

    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-recipe-"), per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=64, num_train_epochs=epochs, eval_strategy="epoch", save_strategy="no",
        logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=device.type == "cpu",
        bf16=device.type == "cuda", seed=0, dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
        data_collator=default_data_collator, optimizers=(optimizer, scheduler), compute_metrics=accuracy,
    )
    trainer.train()
    # The accuracy of the last per-epoch evaluation, so the recipe evaluates as often as the harness.
    return [entry["eval_accuracy"] for entry in trainer.state.log_history if "eval_accuracy" in entry][-1]


def main():
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = setup_device(args.device, args.threads)
    task_cfg = sst2_task(args.train_size, args.validation_size)
    raw = load_task(task_cfg)
    runs = {
        "recipe": lambda: run_recipe(raw, device, args.epochs),
        "harness_grouped": lambda: run_harness(raw, task_cfg, device, args.epochs, group_by_length=True),
        "harness_default": lambda: run_harness(raw, task_cfg, device, args.epochs, group_by_length=False),
    }

    clock = Clock(device)
    seconds = {name: [] for name in runs}
    wall = {name: [] for name in runs}
    accuracy = {}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            start, wall_start = clock.now(), time.perf_counter()
            accuracy[name] = run()
            seconds[name].append(clock.now() - start)
            wall[name].append(time.perf_counter() - wall_start)
            print(f"repeat {repeat} {name}: {seconds[name][-1]:.1f} s, accuracy {accuracy[name]:.3f}", flush=True)

    print("\nseconds per run: median [min, max] of the repeats (CPU seconds on the CPU)")
    for name in runs:
        print(f"  {name:16s} {spread(seconds[name])}   wall {spread(wall[name])}")
    medians = {name: median(values) for name, values in seconds.items()}
    print_result("end_to_end", {
        "machine": describe_machine(device), "train_size": args.train_size, "validation_size": args.validation_size,
        "epochs": args.epochs, "repeats": args.repeats, "seconds": medians,
        "wall_seconds": {name: median(values) for name, values in wall.items()},
        "final_accuracy": accuracy,
        "ratios": {
            "grouped_vs_recipe": medians["recipe"] / medians["harness_grouped"],
            "default_vs_recipe": medians["recipe"] / medians["harness_default"],
        },
    })


if __name__ == "__main__":
    main()
