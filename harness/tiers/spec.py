"""The tier config (`conf/tier/*.yaml`): validation, and the tiers it gives on one model.

Strategies:
- `full`: one tier named `all` at lr `lr` (the baseline).
- `tiers`: split points `split` (block indices where a new tier starts, each in 0..L) and one
  lr per tier in `lrs`, bottom first. `split=4` on 6 blocks gives bottom = embeddings + blocks
  0-3 and top = blocks 4-5 + head.
- `llrd`: one tier per depth (`embeddings`, `block_0` ... `block_{L-1}`, `head`), with
  lr at depth d = lr * decay^(L+1-d). The head gets `lr` and the top block `lr * decay`.

A tier with lr 0, or named in `frozen`, is frozen for the whole run. `unfreeze` turns on
gradual unfreezing: `{unit: epoch|step, every: N}`.

Keys that a strategy does not use must be null, so an override such as `tier.split=3` on the
`full` strategy raises instead of being ignored.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError

KEYS = ("strategy", "split", "lrs", "lr", "decay", "frozen", "unfreeze", "names")
STRATEGY_KEYS = {
    "full": {"required": ("lr",), "unused": ("split", "lrs", "decay", "names")},
    "tiers": {"required": ("split", "lrs"), "unused": ("lr", "decay")},
    "llrd": {"required": ("lr", "decay"), "unused": ("split", "lrs", "names")},
}
UNFREEZE_UNITS = ("epoch", "step")


@dataclass(frozen=True)
class Unfreeze:
    """Gradual unfreezing: the next tier down starts training every `every` epochs or steps."""

    unit: str
    every: int


@dataclass(frozen=True)
class TierSpec:
    """A validated tier config. Checks that need the model's block count come later, in `layout_tiers`."""

    strategy: str
    split: tuple[int, ...]
    lrs: tuple[float, ...]
    lr: float | None
    decay: float | None
    frozen: tuple[str, ...]
    unfreeze: Unfreeze | None
    names: tuple[str, ...] | None


@dataclass(frozen=True)
class Tier:
    """A contiguous range of depths with one lr. A frozen tier has lr 0.0 and never trains."""

    name: str
    first_depth: int
    last_depth: int
    lr: float
    frozen: bool


def parse_spec(tier) -> TierSpec:
    """Validate a tier config (a dict or DictConfig with the keys of `conf/tier/*.yaml`)."""
    if isinstance(tier, DictConfig):
        tier = OmegaConf.to_container(tier, resolve=True)
    if not isinstance(tier, Mapping):
        raise ConfigError(f"tier config must be a mapping with keys {', '.join(KEYS)}; got {tier!r}")

    unknown = sorted(set(tier) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in the tier config; valid keys are {', '.join(KEYS)}")

    strategy = tier.get("strategy")
    if strategy not in STRATEGY_KEYS:
        raise ConfigError(f"unknown tier.strategy={strategy!r}; use one of {', '.join(STRATEGY_KEYS)}")

    for key in STRATEGY_KEYS[strategy]["required"]:
        if tier.get(key) is None:
            raise ConfigError(f"tier.{key} is missing; strategy={strategy} needs it")
    for key in STRATEGY_KEYS[strategy]["unused"]:
        if tier.get(key) is not None:
            raise ConfigError(
                f"tier.{key}={tier[key]!r} has no effect with strategy={strategy}; "
                f"set tier.{key}=null or pick the strategy that uses it"
            )

    return TierSpec(
        strategy=strategy,
        split=_parse_split(tier.get("split")),
        lrs=tuple(_parse_lr(f"tier.lrs[{i}]", lr) for i, lr in enumerate(_parse_list("lrs", tier.get("lrs")))),
        lr=None if tier.get("lr") is None else _parse_lr("tier.lr", tier["lr"]),
        decay=_parse_decay(tier.get("decay")),
        frozen=_parse_names("frozen", tier.get("frozen")),
        unfreeze=_parse_unfreeze(tier.get("unfreeze")),
        names=_parse_names("names", tier.get("names")) or None,
    )


def _parse_list(key, value) -> list:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"tier.{key}={value!r} must be a list, such as tier.{key}=[...]")
    return list(value)


def _parse_split(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"tier.split={value!r} must be a block index or a list of them, such as tier.split=4 or tier.split=[2,4]"
        )

    points = list(value)
    if not points:
        raise ConfigError("tier.split=[] has no split points; give at least one, or use strategy=full for one tier")
    for point in points:
        if not isinstance(point, int) or isinstance(point, bool):
            raise ConfigError(f"split point {point!r} in tier.split={value!r} must be an integer block index")
    if any(later <= earlier for earlier, later in zip(points, points[1:])):
        raise ConfigError(
            f"tier.split={value!r} must be strictly ascending with no repeats, such as tier.split=[2,4]"
        )
    return tuple(points)


def _parse_lr(key, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} must be a number, such as 2e-5")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key}={value!r} must be a finite number >= 0 (0 freezes the tier)")
    return float(value)


def _parse_decay(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(
            f"tier.decay={value!r} must be a number in (0, 1]; the lr at depth d is "
            "lr * decay^(L+1-d), so use a value such as 0.95"
        )
    return float(value)


def _parse_names(key, value) -> tuple[str, ...]:
    names = _parse_list(key, value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"tier.{key}={value!r} must be a list of tier names")
    if len(set(names)) != len(names):
        raise ConfigError(f"tier.{key}={value!r} repeats a name; list each tier once")
    return tuple(names)


def _parse_unfreeze(value) -> Unfreeze | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"unit", "every"}:
        raise ConfigError(
            f"tier.unfreeze={value!r} must be null or have exactly the keys unit and every, "
            "such as {unit: epoch, every: 1}"
        )
    unit, every = value["unit"], value["every"]
    if unit not in UNFREEZE_UNITS:
        raise ConfigError(f"tier.unfreeze.unit={unit!r} is invalid; use one of {', '.join(UNFREEZE_UNITS)}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"tier.unfreeze.every={every!r} must be an integer >= 1 ({unit}s between unfreezing)")
    return Unfreeze(unit, every)


def layout_tiers(spec: TierSpec, depths) -> list[Tier]:
    """Turn `spec` into tiers, bottom first, on a model with `depths.num_blocks` blocks.

    `depths` is the model's `ModelDepths`, whose block count and description go into messages.
    """
    num_blocks = depths.num_blocks
    head = num_blocks + 1

    if spec.strategy == "full":
        tiers = [Tier("all", 0, head, spec.lr, False)]
    elif spec.strategy == "llrd":
        names = ["embeddings", *(f"block_{i}" for i in range(num_blocks)), "head"]
        tiers = [Tier(name, d, d, spec.lr * spec.decay ** (head - d), False) for d, name in enumerate(names)]
        if spec.lr > 0 and tiers[0].lr == 0:
            # An lr of 0 freezes a tier, so an underflow would freeze the bottom tiers unasked.
            raise ConfigError(
                f"tier.decay={spec.decay!r} underflows: tier.lr * decay^{head} is 0 for the embeddings of this "
                f"{num_blocks}-block model. Use a larger decay such as 0.9, or list the tiers to freeze in tier.frozen."
            )
    else:
        tiers = _split_tiers(spec, depths)

    tiers = _apply_frozen(spec, tiers)
    if all(tier.frozen for tier in tiers):
        raise ConfigError(
            "every tier is frozen, so nothing would train; give at least one tier an lr > 0 "
            "and leave it out of tier.frozen"
        )
    if spec.unfreeze is not None and sum(not tier.frozen for tier in tiers) < 2:
        raise ConfigError(
            "tier.unfreeze needs at least 2 tiers that train, but this plan has 1; "
            "use strategy=tiers or llrd, or set tier.unfreeze=null"
        )
    return tiers


def _split_tiers(spec, depths) -> list[Tier]:
    num_blocks = depths.num_blocks
    for point in spec.split:
        if not 0 <= point <= num_blocks:
            raise ConfigError(
                f"split point {point} in tier.split is out of range: {depths.describe_blocks()}. "
                f"A split point is the block index where a new tier starts, in 0..{num_blocks}."
            )

    num_tiers = len(spec.split) + 1
    names = spec.names or default_tier_names(num_tiers)
    if len(names) != num_tiers:
        raise ConfigError(
            f"tier.names={list(names)} does not match tier.split={list(spec.split)}, which makes "
            f"{num_tiers} tiers; give one name per tier, bottom first"
        )
    if len(spec.lrs) != num_tiers:
        raise ConfigError(
            f"tier.lrs={list(spec.lrs)} does not match tier.split={list(spec.split)}, which makes "
            f"{num_tiers} tiers ({', '.join(names)}); give one lr per tier, bottom first"
        )

    # Block k is depth k + 1, so a tier that starts at block k starts at depth k + 1.
    firsts = [0, *(point + 1 for point in spec.split)]
    lasts = [*(point for point in spec.split), num_blocks + 1]
    return [Tier(n, first, last, lr, False) for n, first, last, lr in zip(names, firsts, lasts, spec.lrs)]


def default_tier_names(num_tiers: int) -> list[str]:
    """Return `bottom, top` for 2 tiers, `bottom, middle, top` for 3, else `tier_0` ... `tier_{n-1}`."""
    if num_tiers == 2:
        return ["bottom", "top"]
    if num_tiers == 3:
        return ["bottom", "middle", "top"]
    return [f"tier_{i}" for i in range(num_tiers)]


def _apply_frozen(spec, tiers) -> list[Tier]:
    names = [tier.name for tier in tiers]
    unknown = [name for name in spec.frozen if name not in names]
    if unknown:
        raise ConfigError(
            f"tier.frozen names unknown tier(s) {', '.join(unknown)}; this plan's tiers are {', '.join(names)}"
        )
    return [
        Tier(t.name, t.first_depth, t.last_depth, 0.0, True) if t.name in spec.frozen or t.lr == 0 else t
        for t in tiers
    ]
