"""The training loop: AdamW over the tier plan's param groups, warmup schedule, per-epoch evaluation.

A compact loop of our own rather than the HF Trainer, so that tier groups, frozen tiers,
gradual unfreezing and pruning hooks are first-class. It also skips work that does not change
the result (docs/benchmarks.md has the measurements):

- a frozen bottom tier with the embeddings runs under `torch.no_grad`, and its output hidden
  states are cached across epochs and runs of this process (`train.activation_cache`);
- the linear layers of the blocks compute only real tokens, not padding (`train.unpad`);
- evaluation batches go by length, and training batches can too (`train.group_by_length`).
"""

import hashlib
import logging
import math
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch.utils.data import BatchSampler
from tqdm.auto import tqdm

from harness import activation_cache
from harness.errors import ConfigError
from harness.metrics import compute_metrics
from harness.tiers import FrozenPrefix
from harness.unpadding import TokenUnpadding

logger = logging.getLogger(__name__)

# Defaults of the speed switches, for train configs written before they existed.
SPEED_DEFAULTS = {"group_by_length": False, "unpad": True, "activation_cache": True, "activation_cache_max_mb": 2048}


@dataclass
class TrainResult:
    history: list = field(default_factory=list)  # one dict of validation metrics per evaluation
    train_losses: list = field(default_factory=list)  # (step, loss) pairs
    best_epoch: int = 0
    best: dict = field(default_factory=dict)  # validation metrics at the best epoch
    final: dict = field(default_factory=dict)  # validation metrics after the last epoch
    test: dict = field(default_factory=dict)  # test metrics of the best epoch's weights
    # Accuracy on `loaders["train_eval"]` (training examples, eval mode, final weights), nan without it.
    train_accuracy: float = float("nan")
    train_time_s: float = 0.0
    samples_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    steps: int = 0
    activation_cache_mb: float = 0.0  # size of the activation cache entries this run used
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


def check_speed_config(train_cfg) -> None:
    """Reject invalid values of the speed switches (`train.group_by_length` and the others)."""
    for key in ("group_by_length", "unpad", "activation_cache"):
        value = train_cfg.get(key, SPEED_DEFAULTS[key])
        if not isinstance(value, bool):
            raise ConfigError(f"train.{key}={value!r} is invalid: expected true or false. Fix it with train.{key}=true.")
    limit = train_cfg.get("activation_cache_max_mb", SPEED_DEFAULTS["activation_cache_max_mb"])
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit >= 0:
        raise ConfigError(
            f"train.activation_cache_max_mb={limit!r} is invalid: expected a number of MiB >= 0. "
            "Fix it with train.activation_cache_max_mb=2048."
        )


def _speed_setting(train_cfg, key):
    return train_cfg.get(key, SPEED_DEFAULTS[key])


def _lengths(dataset) -> list[int]:
    return [len(ids) for ids in dataset["input_ids"]]


def _train_batch_sampler(loader, group_by_length: bool):
    # The loader's own sampler draws from its seeded generator; the length-grouped one does too,
    # so both orders depend only on the seed.
    if not group_by_length:
        return loader.batch_sampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    sampler = LengthGroupedSampler(loader.batch_size, lengths=_lengths(loader.dataset), generator=loader.generator)
    return BatchSampler(sampler, loader.batch_size, drop_last=False)


def _eval_batch_sampler(loader) -> list[list[int]]:
    # Evaluation metrics do not depend on the order, so batches go from longest to shortest.
    lengths = _lengths(loader.dataset)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + loader.batch_size] for start in range(0, len(order), loader.batch_size)]


def _batches(loader, batch_sampler):
    """Yield (example indices, collated batch) for every batch of `batch_sampler`."""
    get_rows = getattr(loader.dataset, "__getitems__", None)
    for indices in batch_sampler:
        indices = list(indices)
        rows = get_rows(indices) if get_rows else [loader.dataset[i] for i in indices]
        yield indices, loader.collate_fn(rows)


def _train_order_key(loader, group_by_length: bool) -> str:
    # The activation cache keeps the values computed in the first batch that contains each example.
    # They can differ in the last bits with that batch's padded length, so runs share an entry
    # only when their batches are the same: same batch size, sampler and generator state.
    state = loader.generator.get_state().numpy().tobytes() if loader.generator is not None else b"none"
    digest = hashlib.blake2b(state, digest_size=8).hexdigest()
    return f"train-{loader.batch_size}-{'by-length' if group_by_length else 'loader-order'}-{digest}"


def _eval_order_key(loader) -> str:
    return f"eval-{loader.batch_size}-by-length"


class ForwardPass:
    """The model's forward pass, split at the frozen prefix and unpadded when the config allows it."""

    def __init__(self, model, plan, train_cfg, device):
        self.model = model
        self.device = device
        self.use_cache = _speed_setting(train_cfg, "activation_cache")
        self.max_cache_bytes = int(_speed_setting(train_cfg, "activation_cache_max_mb") * 2**20)
        self.unpad = _speed_setting(train_cfg, "unpad")
        self._prefix_key = None
        self._pending = {}  # split -> (cache key, loader), until the split's first batch
        self._entries = {}  # split -> CacheEntry, or None when the split runs uncached

        self.prefix, reason = FrozenPrefix.from_plan(model, plan)
        if self.prefix is None:
            logger.info("Frozen prefix: none (%s); the model runs its plain forward", reason)
        else:
            logger.info(
                "Frozen prefix: embeddings and blocks 0-%d run under torch.no_grad (activation cache %s)",
                self.prefix.start - 1, "on" if self.use_cache else "off",
            )
            if self.use_cache:
                self._prefix_key = activation_cache.prefix_key(model, self.prefix, plan.param_depth)

        stacks = [model.get_submodule(stack.path) for stack in plan.stacks]
        self.unpadding = TokenUnpadding(stacks) if self.unpad else None

    def close(self) -> None:
        if self.unpadding is not None:
            self.unpadding.remove()

    def cache_bytes(self) -> int:
        return sum(entry.num_bytes for entry in self._entries.values() if entry is not None)

    def attach(self, split: str, loader, order_key: str) -> None:
        """Prepare the activation cache of one split; its entry is made at the split's first batch."""
        if self._prefix_key is None or split in self._pending or split in self._entries:
            return
        padding_side = getattr(getattr(loader.collate_fn, "tokenizer", None), "padding_side", "right")
        fingerprint = activation_cache.dataset_fingerprint(loader.dataset)
        if padding_side != "right" or fingerprint is None:
            logger.info(
                "Activation cache off for the %s split: it needs right padding and a datasets fingerprint "
                "(padding side %s, fingerprint %s)", split, padding_side, fingerprint,
            )
            self._entries[split] = None
            return
        self._pending[split] = ((self._prefix_key, fingerprint, order_key, self.unpad, str(self.device)), loader)

    def __call__(self, batch: dict, indices: list[int], split: str):
        mask = batch["attention_mask"]
        with self.unpadding.tokens(mask) if self.unpadding else nullcontext():
            if self.prefix is None:
                return self.model(**batch)

            entry = self._entries.get(split)
            hidden = entry.lookup(indices, mask) if entry is not None else None
            if hidden is None:
                hidden = self.prefix.hidden_states(batch)
                entry = self._entries.get(split) if split not in self._pending else self._make_entry(split, hidden)
                if entry is not None:
                    entry.store(indices, mask, hidden)
            with self.prefix.rest(hidden):
                return self.model(**batch)

    def _make_entry(self, split, hidden):
        # The hidden size and dtype are known once the prefix has run.
        key, loader = self._pending.pop(split)
        self._entries[split] = activation_cache.get_entry(
            key, _lengths(loader.dataset), hidden.shape[-1], hidden.dtype, hidden.device, self.max_cache_bytes,
        )
        return self._entries[split]


@torch.no_grad()
def evaluate(model, loader, device, forward=None, split="validation") -> dict:
    """Return loss, accuracy, macro-F1 and MCC of `model` on `loader`.

    With a `ForwardPass`, batches go from the longest to the shortest example and the forward
    pass is split and cached as in training.
    """
    was_training = model.training
    model.eval()
    if forward is None:
        batches = ((None, batch) for batch in loader)
    else:
        forward.attach(split, loader, _eval_order_key(loader))
        batches = _batches(loader, _eval_batch_sampler(loader))

    total_loss, count = 0.0, 0
    labels, predictions = [], []
    for indices, batch in batches:
        batch = _to_device(batch, device)
        with _autocast(device):
            output = model(**batch) if forward is None else forward(batch, indices, split)
        total_loss += output.loss.float().item() * len(batch["labels"])
        count += len(batch["labels"])
        labels.append(batch["labels"].cpu())
        predictions.append(output.logits.argmax(dim=-1).cpu())

    model.train(was_training)
    metrics = compute_metrics(torch.cat(labels).numpy(), torch.cat(predictions).numpy())
    metrics["loss"] = total_loss / count
    return metrics


def _snapshot_trained(model, plan) -> dict:
    # Every tensor in a param group, including tiers that gradual unfreezing has not reached yet.
    in_groups = {id(param) for group in plan.param_groups for param in group["params"]}
    return {name: param.detach().to("cpu", copy=True) for name, param in model.named_parameters() if id(param) in in_groups}


def weight_drift(model, initial: dict, param_depth: dict) -> dict:
    """Return the relative drift ||W - W0|| / ||W0|| of each depth, over all its parameters."""
    squared_change, squared_norm = {}, {}
    for name, param in model.named_parameters():
        depth = param_depth[name]
        after = param.detach().to("cpu").float()
        # A tensor missing from `initial` stayed frozen for the whole run.
        before = initial[name].float() if name in initial else after
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
    Each loader must be a map-style DataLoader over a tokenized dataset with an `input_ids` column.
    """
    from transformers import get_scheduler

    check_speed_config(train_cfg)
    device = pick_device(train_cfg.device)
    model.to(device)
    result = TrainResult()
    # Frozen tensors never change, so only the trained ones are copied for the weight drift.
    initial = _snapshot_trained(model, plan)

    # Optimizer and schedule: the scheduler multiplies each group's own lr, so tier ratios hold.
    # Fused AdamW runs on CUDA and on the CPU (torch >= 2.4).
    optimizer = torch.optim.AdamW(plan.param_groups, lr=0.0, fused=device.type in ("cuda", "cpu"))
    epochs, total_steps = plan_steps(train_cfg, len(loaders["train"]))
    warmup_steps = int(train_cfg.warmup_ratio * total_steps)
    scheduler = get_scheduler(
        train_cfg.scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
    )
    logger.info(
        "Training %d epochs, %d optimizer steps (%d warmup), %s schedule on %s",
        epochs, total_steps, warmup_steps, train_cfg.scheduler, device,
    )

    # Batches in the loader's seeded order or length-grouped; the forward pass split and cached.
    group_by_length = _speed_setting(train_cfg, "group_by_length")
    train_sampler = _train_batch_sampler(loaders["train"], group_by_length)
    forward = ForwardPass(model, plan, train_cfg, device)
    forward.attach("train", loaders["train"], _train_order_key(loaders["train"], group_by_length))

    lr_marks = {0: ["start"]}
    lr_marks.setdefault(warmup_steps, []).append("warmup_end")
    best_value = -math.inf
    best_state = None
    samples = 0
    step = 0
    start = time.perf_counter()
    progress = tqdm(total=total_steps, desc="train", unit="step", disable=not train_cfg.progress_bar)

    try:
        for epoch in range(1, epochs + 1):
            for name in plan.update_unfreezing(epoch - 1, step):
                logger.info("Gradual unfreezing: tier %s trains from epoch %d (step %d)", name, epoch, step)
            plan.train_mode(model)

            for indices, batch in _batches(loaders["train"], train_sampler):
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
                    output = forward(batch, indices, "train")
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
                result.train_losses.append((step, loss_value))
                progress.update(1)
                progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}")
                if on_log and step % train_cfg.log_every == 0:
                    on_log(step, loss_value, _tier_lrs(optimizer))

            # Evaluation and best-epoch selection on the task's main metric.
            metrics = evaluate(model, loaders["validation"], device, forward)
            metrics["epoch"] = epoch
            result.history.append(metrics)
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
        if "train_eval" in loaders:
            result.train_accuracy = evaluate(model, loaders["train_eval"], device, forward, split="train_eval")["accuracy"]

        # Test metrics use the weights of the best epoch.
        if "test" in loaders:
            model.load_state_dict(best_state, strict=False)
            result.test = evaluate(model, loaders["test"], device, forward, split="test")
    finally:
        result.activation_cache_mb = forward.cache_bytes() / 2**20
        forward.close()

    if result.activation_cache_mb:
        logger.info("Activation cache: %.1f MB used by this run", result.activation_cache_mb)
    return result
