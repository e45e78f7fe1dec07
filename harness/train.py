"""The training loop: AdamW over the tier plan's param groups, warmup schedule, per-epoch evaluation.

A compact loop of our own rather than the HF Trainer, so that tier groups, frozen tiers,
gradual unfreezing and pruning hooks are first-class.
"""

import logging
import math
import resource
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from harness.metrics import compute_metrics

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    history: list = field(default_factory=list)  # one dict of validation metrics per evaluation
    train_losses: list = field(default_factory=list)  # (step, loss) pairs
    best_epoch: int = 0
    best: dict = field(default_factory=dict)  # validation metrics at the best epoch
    final: dict = field(default_factory=dict)  # validation metrics after the last epoch
    test: dict = field(default_factory=dict)  # test metrics of the best epoch's weights
    train_accuracy: float = float("nan")  # running accuracy on the last epoch's training batches
    train_time_s: float = 0.0
    samples_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    steps: int = 0
    tier_lrs: dict = field(default_factory=dict)  # tier -> {"start", "warmup_end", "end"}
    drift: dict = field(default_factory=dict)  # depth -> ||W - W0|| / ||W0||


def pick_device(name: str) -> torch.device:
    """Resolve `train.device`: `auto` picks CUDA when present, otherwise the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device):
    # bf16 autocast on CUDA; full precision on the CPU, where bf16 matmuls are slower here.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _to_device(batch, device):
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


@torch.no_grad()
def evaluate(model, loader, device) -> dict:
    """Return loss, accuracy, macro-F1 and MCC of `model` on `loader`."""
    was_training = model.training
    model.eval()

    total_loss, count = 0.0, 0
    labels, predictions = [], []
    for batch in loader:
        batch = _to_device(batch, device)
        with _autocast(device):
            output = model(**batch)
        total_loss += output.loss.float().item() * len(batch["labels"])
        count += len(batch["labels"])
        labels.append(batch["labels"].cpu())
        predictions.append(output.logits.argmax(dim=-1).cpu())

    model.train(was_training)
    metrics = compute_metrics(torch.cat(labels).numpy(), torch.cat(predictions).numpy())
    metrics["loss"] = total_loss / count
    return metrics


def _snapshot(model) -> dict:
    return {name: param.detach().to("cpu", copy=True) for name, param in model.named_parameters()}


def _snapshot_trained(model, plan) -> dict:
    # Every tensor in a param group, including tiers that gradual unfreezing has not reached yet.
    in_groups = {id(param) for group in plan.param_groups for param in group["params"]}
    return {name: param.detach().to("cpu", copy=True) for name, param in model.named_parameters() if id(param) in in_groups}


def weight_drift(model, initial: dict, param_depth: dict) -> dict:
    """Return the relative drift ||W - W0|| / ||W0|| of each depth, over all its parameters."""
    squared_change, squared_norm = {}, {}
    for name, param in model.named_parameters():
        depth = param_depth[name]
        before = initial[name].float()
        after = param.detach().to("cpu").float()
        squared_change[depth] = squared_change.get(depth, 0.0) + (after - before).pow(2).sum().item()
        squared_norm[depth] = squared_norm.get(depth, 0.0) + before.pow(2).sum().item()
    return {
        depth: math.sqrt(squared_change[depth]) / math.sqrt(squared_norm[depth]) if squared_norm[depth] else 0.0
        for depth in sorted(squared_change)
    }


def _tier_lrs(optimizer) -> dict:
    lrs = {}
    for group in optimizer.param_groups:
        lrs.setdefault(group["tier"], group["lr"])
    return lrs


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux and in bytes on macOS; it covers the whole process.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def plan_steps(train_cfg, batches_per_epoch: int) -> tuple[int, int]:
    """Return (epochs, total optimizer steps); `train.max_steps` > 0 overrides `train.epochs`."""
    max_steps = train_cfg.get("max_steps") or 0
    if max_steps > 0:
        return math.ceil(max_steps / batches_per_epoch), max_steps
    return train_cfg.epochs, train_cfg.epochs * batches_per_epoch


def train(model, plan, loaders, train_cfg, metric_name, on_evaluate=None, on_log=None) -> TrainResult:
    """Fine-tune `model` with `plan`'s param groups and return what the run records.

    `on_evaluate(epoch, metrics)` runs after each validation pass and may raise (pruning).
    `on_log(step, loss, tier_lrs)` runs every `train.log_every` optimizer steps.
    """
    from transformers import get_scheduler

    device = pick_device(train_cfg.device)
    model.to(device)
    result = TrainResult()
    initial = _snapshot(model)

    # Optimizer and schedule: the scheduler multiplies each group's own lr, so tier ratios hold.
    optimizer = torch.optim.AdamW(plan.param_groups, lr=0.0, fused=device.type == "cuda")
    epochs, total_steps = plan_steps(train_cfg, len(loaders["train"]))
    warmup_steps = int(train_cfg.warmup_ratio * total_steps)
    scheduler = get_scheduler(
        train_cfg.scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
    )
    logger.info(
        "Training %d epochs, %d optimizer steps (%d warmup), %s schedule on %s",
        epochs, total_steps, warmup_steps, train_cfg.scheduler, device,
    )

    lr_marks = {0: ["start"]}
    lr_marks.setdefault(warmup_steps, []).append("warmup_end")
    best_value = -math.inf
    best_state = None
    samples = 0
    step = 0
    start = time.perf_counter()
    progress = tqdm(total=total_steps, desc="train", unit="step", disable=not train_cfg.progress_bar)

    for epoch in range(1, epochs + 1):
        for name in plan.update_unfreezing(epoch - 1, step):
            logger.info("Gradual unfreezing: tier %s trains from epoch %d (step %d)", name, epoch, step)
        plan.train_mode(model)
        correct, seen = 0, 0

        for batch in loaders["train"]:
            if step >= total_steps:
                break
            for name in plan.update_unfreezing(epoch - 1, step):
                logger.info("Gradual unfreezing: tier %s trains from step %d", name, step)
                plan.train_mode(model)
            for mark in lr_marks.get(step, []):
                for tier, lr in _tier_lrs(optimizer).items():
                    result.tier_lrs.setdefault(tier, {})[mark] = lr

            # One optimizer step.
            batch = _to_device(batch, device)
            with _autocast(device):
                output = model(**batch)
            loss = output.loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss is {loss_value} at step {step}; lower the learning rates")
            samples += len(batch["labels"])
            correct += (output.logits.argmax(-1) == batch["labels"]).sum().item()
            seen += len(batch["labels"])
            result.train_losses.append((step, loss_value))
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}")
            if on_log and step % train_cfg.log_every == 0:
                on_log(step, loss_value, _tier_lrs(optimizer))

        # Evaluation and best-epoch selection on the task's main metric.
        metrics = evaluate(model, loaders["validation"], device)
        metrics["epoch"] = epoch
        result.history.append(metrics)
        result.train_accuracy = correct / max(seen, 1)
        logger.info("Epoch %d: validation %s=%.4f loss=%.4f", epoch, metric_name, metrics[metric_name], metrics["loss"])
        if metrics[metric_name] > best_value:
            best_value = metrics[metric_name]
            result.best_epoch = epoch
            result.best = metrics
            best_state = _snapshot_trained(model, plan)
        if on_evaluate:
            on_evaluate(epoch, metrics)

    progress.close()
    result.train_time_s = time.perf_counter() - start
    result.samples_per_s = samples / result.train_time_s
    result.steps = step
    result.final = result.history[-1]
    for tier, lr in _tier_lrs(optimizer).items():
        result.tier_lrs.setdefault(tier, {})["end"] = lr
    result.drift = weight_drift(model, initial, plan.param_depth)
    result.peak_memory_mb = _peak_memory_mb(device)

    # Test metrics use the weights of the best epoch.
    if "test" in loaders:
        model.load_state_dict(best_state, strict=False)
        result.test = evaluate(model, loaders["test"], device)
    return result
