"""One experiment: validate and build everything, then train, evaluate and record one MLflow run."""

import logging
import math
from dataclasses import dataclass

import mlflow
import torch
from mlflow.entities import RunStatus
from omegaconf import OmegaConf

from harness import baseline as baselines
from harness import tracking
from harness.data import load_task, make_loader, summarize_task, tokenize_task
from harness.errors import ConfigError
from harness.models import load_model, load_tokenizer
from harness.tiers import build_plan
from harness.train import TrainResult, check_speed_config, plan_steps, train

logger = logging.getLogger(__name__)

BASELINE_MODES = ("auto", "require", "off")


@dataclass
class Prepared:
    cfg: object
    model: object
    plan: object
    loaders: dict
    data_summary: str
    total_params: int
    role: str  # "baseline" for full fine-tuning, "layerwise" otherwise


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)


def check_train_config(cfg) -> None:
    """Reject invalid training values before any data or model is loaded."""
    train_cfg = cfg.train
    check_speed_config(train_cfg)
    checks = [
        (train_cfg.batch_size, "train.batch_size", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
        (train_cfg.eval_batch_size, "train.eval_batch_size", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
        (train_cfg.epochs, "train.epochs", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
        (train_cfg.max_steps, "train.max_steps", lambda v: v is None or (isinstance(v, int) and v >= 0), "null, 0 or a positive integer"),
        (train_cfg.warmup_ratio, "train.warmup_ratio", lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1)"),
        (train_cfg.weight_decay, "train.weight_decay", lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, "a finite number >= 0"),
        (train_cfg.max_grad_norm, "train.max_grad_norm", lambda v: isinstance(v, (int, float)) and v > 0, "a positive number"),
        (train_cfg.log_every, "train.log_every", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
        (cfg.task.max_length, "task.max_length", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
        (cfg.seed, "seed", lambda v: isinstance(v, int) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
        (cfg.baseline, "baseline", lambda v: v in BASELINE_MODES, f"one of {', '.join(BASELINE_MODES)}"),
        (train_cfg.device, "train.device", lambda v: v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:"), "auto, cpu, cuda or cuda:N"),
    ]
    for value, key, is_valid, expected in checks:
        if isinstance(value, bool) or not is_valid(value):
            raise ConfigError(f"{key}={value!r} is invalid: expected {expected}. Fix it with {key}=<value>.")

    if str(train_cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={train_cfg.device!r} but this machine has no CUDA device visible to torch. "
            "Use train.device=auto (CUDA when present, otherwise the CPU) or train.device=cpu."
        )
    if cfg.baseline_tier.strategy != "full":
        raise ConfigError(
            f"baseline_tier.strategy={cfg.baseline_tier.strategy!r}: the baseline is full fine-tuning. "
            "Keep baseline_tier.strategy=full and change only baseline_tier.lr."
        )
    if not str(cfg.tracking.experiment).strip():
        raise ConfigError("tracking.experiment is empty. Name the MLflow experiment, e.g. tracking.experiment=layerwise.")

    from transformers.trainer_utils import SchedulerType

    schedulers = [item.value for item in SchedulerType]
    if train_cfg.scheduler not in schedulers:
        raise ConfigError(
            f"train.scheduler={train_cfg.scheduler!r} is not a transformers scheduler. "
            f"Use one of: {', '.join(schedulers)}."
        )


def prepare(cfg) -> Prepared:
    """Validate the config, load data and model, and build the tier plan. No training yet."""
    check_train_config(cfg)

    raw = load_task(cfg.task)
    data_summary = summarize_task(raw, cfg.task)
    tokenizer = load_tokenizer(cfg.model)

    # Seed before the model is built, so the new classifier head is the same in every job.
    set_seed(cfg.seed)
    model = load_model(cfg.model, cfg.task.num_labels, cfg.task.label_names, tokenizer)
    _check_max_length(cfg, model)
    plan = build_plan(model, cfg.tier, weight_decay=cfg.train.weight_decay)

    tokenized = tokenize_task(raw, tokenizer, cfg.task)
    loaders = {"train": make_loader(tokenized["train"], tokenizer, cfg.train.batch_size, shuffle=True, seed=cfg.seed)}
    for split in ("validation", "test"):
        if split in tokenized:
            loaders[split] = make_loader(tokenized[split], tokenizer, cfg.train.eval_batch_size, shuffle=False, seed=cfg.seed)

    # As many training examples as validation examples, for the train-validation gap at the end.
    train_eval = tokenized["train"].select(range(min(len(tokenized["train"]), len(tokenized["validation"]))))
    loaders["train_eval"] = make_loader(train_eval, tokenizer, cfg.train.eval_batch_size, shuffle=False, seed=cfg.seed)

    role = "baseline" if is_baseline_tier(cfg) else "layerwise"
    total_params = sum(param.numel() for param in model.parameters())
    return Prepared(cfg, model, plan, loaders, data_summary, total_params, role)


def is_baseline_tier(cfg) -> bool:
    """Return True when the run's tier spec is the baseline's (full fine-tuning at baseline_tier.lr).

    A full fine-tuning run at another lr is compared with the baseline like any layer-wise run.
    """
    tier = OmegaConf.to_container(cfg.tier, resolve=True)
    baseline_tier = OmegaConf.to_container(cfg.baseline_tier, resolve=True)
    return tier == baseline_tier


def _check_max_length(cfg, model) -> None:
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and cfg.task.max_length > max_positions:
        raise ConfigError(
            f"task.max_length={cfg.task.max_length} is longer than the {max_positions} positions of "
            f"model {cfg.model.name!r}. Set task.max_length={max_positions} or less."
        )


def describe(prepared: Prepared) -> str:
    """Return what was built: data summary, budget and tier table."""
    cfg = prepared.cfg
    epochs, steps = plan_steps(cfg.train, len(prepared.loaders["train"]))
    trainable = tracking.plan_trainable_params(prepared.plan)
    return "\n".join([
        prepared.data_summary,
        f"Model {cfg.model.name}: {prepared.total_params / 1e6:.2f} M parameters, "
        f"{trainable / 1e6:.2f} M trainable ({100 * trainable / prepared.total_params:.1f}%)",
        f"Budget: {epochs} epochs, {steps} optimizer steps, batch size {cfg.train.batch_size}, seed {cfg.seed}",
        prepared.plan.render(),
    ])


def run_tags(prepared: Prepared, key: str, sweep_id: str | None) -> dict:
    cfg = prepared.cfg
    split = cfg.tier.get("split")
    if split is None:
        split_text = ""
    elif isinstance(split, int):
        split_text = str(split)
    else:
        split_text = ",".join(str(point) for point in split)
    commit, dirty = tracking.git_state()
    tags = {
        "model": cfg.model.name,
        "task": cfg.task.name,
        "strategy": cfg.tier.strategy,
        "split": split_text,
        "seed": str(cfg.seed),
        "tier_config": tier_label(cfg.tier),
        "role": prepared.role,
        "baseline_key": key,
        "metric_name": cfg.task.metric,
        "git_commit": commit,
        "git_dirty": dirty,
    }
    if sweep_id:
        tags["sweep_id"] = sweep_id
    return tags


def tier_label(tier_cfg) -> str:
    """Return a short label for a tier spec, such as `tiers split=4 lrs=2e-05,0.0001`."""
    parts = [str(tier_cfg.strategy)]
    for key in ("split", "lrs", "lr", "decay", "frozen", "unfreeze"):
        value = tier_cfg.get(key)
        if value is None or (key == "lr" and tier_cfg.strategy == "tiers") or value == []:
            continue
        if hasattr(value, "items"):
            value = ",".join(f"{k}:{v}" for k, v in value.items())
        elif hasattr(value, "__iter__") and not isinstance(value, str):
            value = ",".join(str(item) for item in value)
        parts.append(f"{key}={value}")
    return " ".join(parts)


def execute(prepared: Prepared, tags: dict, parent_run_id=None, reporter=None, baseline_run=None) -> dict:
    """Train and evaluate inside a new MLflow run; return the summary metrics.

    The run ends FINISHED only when everything was logged. An exception marks it FAILED
    with the error in tag `error`; Ctrl-C marks it KILLED; a pruned trial is KILLED with
    tag `trial_state=PRUNED`.
    """
    cfg = prepared.cfg
    run_name = f"{tags['strategy']}-{tags['split'] or 'all'}-seed{cfg.seed}".replace(",", "_")
    run = mlflow.start_run(run_name=run_name, tags=tags, parent_run_id=parent_run_id)
    run_id = run.info.run_id
    if reporter is not None:
        reporter.set_run_id(run_id)

    try:
        tracking.log_setup(cfg, prepared.plan, prepared.data_summary)
        result = _train_and_log(prepared, run_id, reporter)
        summary = tracking.summary_metrics(result, prepared.plan, cfg.task.metric, prepared.total_params)
        if baseline_run is not None:
            summary.update(baselines.deltas(summary, baseline_run))
            mlflow.set_tag("baseline_run_id", baseline_run.info.run_id)
        mlflow.log_metrics(summary)
        mlflow.log_text(_epochs_csv(result), "epochs.csv")
    except KeyboardInterrupt as interrupt:
        mlflow.set_tag("error", f"interrupted: {str(interrupt) or 'KeyboardInterrupt'}")
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as error:
        _end_failed(error)
        raise

    mlflow.end_run()
    return summary


def _end_failed(error: BaseException) -> None:
    if type(error).__name__ == "TrialPruned":
        mlflow.set_tag("trial_state", "PRUNED")
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        return
    mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
    mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))


def _train_and_log(prepared: Prepared, run_id: str, reporter) -> TrainResult:
    cfg = prepared.cfg
    pending_losses = []

    def on_log(step, loss, tier_lrs):
        pending_losses.append((step, loss))

    def on_evaluate(epoch, metrics):
        tracking.log_epoch(run_id, epoch, metrics, pending_losses)
        pending_losses.clear()
        if reporter is not None:
            reporter.report(metrics[cfg.task.metric], epoch)

    # Reseed right before training so dropout and shuffling do not depend on what ran
    # earlier in this process (a baseline, or earlier jobs of a multirun).
    set_seed(cfg.seed)
    return train(prepared.model, prepared.plan, prepared.loaders, cfg.train, cfg.task.metric, on_evaluate, on_log)


def _epochs_csv(result: TrainResult) -> str:
    import pandas as pd

    return pd.DataFrame(result.history).to_csv(index=False)
