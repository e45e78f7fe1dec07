"""The search space of a sweep: Hydra sweep syntax over any config key, plus tier split points and lrs.

`hydra.sweeper.params` and sweep overrides on the command line use Hydra's sweep syntax
(`interval`, `int(interval(...))`, `tag(log, ...)`, `range`, `choice`), as hydra-optuna-sweeper
does. `hydra.sweeper.tiers` samples `tier.split` and `tier.lrs` together, so that split points
stay strictly ascending inside the model and every tier gets one lr.
"""

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from harness.errors import ConfigError
from harness.trial import check_split

SPLIT_KEY = "tier.split"
LRS_KEY = "tier.lrs"
KNOWN_TAGS = {"log"}
SPLIT_FIELDS = {"count", "low", "high"}
LRS_FIELDS = {"low", "high", "log", "monotone", "choices"}
# Strings that Hydra reads back unchanged without quotes.
BARE_STRING = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
RESERVED_WORDS = {"true", "false", "null", "inf", "nan"}


@dataclass(frozen=True)
class Param:
    """One sampled config key; its Optuna parameter has the key as its name."""

    key: str
    distribution: BaseDistribution
    # Choices such as `[2, 4]` are stored as their Hydra text, because Optuna persists only scalars.
    hydra_text: bool = False


@dataclass
class SplitSpec:
    """`count` strictly ascending split points in `low..high` (high None: the model's block count - 1)."""

    count: int
    low: int = 1
    high: int | None = None


@dataclass
class LrsSpec:
    """One lr per tier: a float range (`low`, `high`, `log`) or a list of `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = True
    # True: each tier's lr is at least the lr of the tier below it.
    monotone: bool = False
    choices: list | None = None


@dataclass
class SearchSpace:
    params: list[Param]
    # Overrides that every job gets unchanged, as Hydra text.
    fixed: list[str]
    split: SplitSpec | None = None
    lrs: LrsSpec | None = None
    # The number of tiers, known after validate(): the split points + 1.
    num_tiers: int | None = None
    fixed_split: list[int] | None = field(default=None, repr=False)

    def validate(self, job_cfg, count_blocks) -> None:
        """Raise ConfigError unless every key exists in the job config and the split fits the model.

        `count_blocks()` returns the model's block count; it is called only for a tiers search.
        """
        for param in self.params:
            if not _has_key(job_cfg, param.key):
                raise ConfigError(
                    f"Search space key {param.key!r} is not a key of the job config. "
                    "Check the spelling against `python -m harness.run --cfg job`."
                )
        if self.split is not None or self.lrs is not None:
            self._validate_tiers(job_cfg, count_blocks)

    def _validate_tiers(self, job_cfg, count_blocks) -> None:
        tier = OmegaConf.select(job_cfg, "tier")
        if not isinstance(tier, DictConfig) or "split" not in tier.keys() or "lrs" not in tier.keys():
            raise ConfigError(
                "hydra.sweeper.tiers samples tier.split and tier.lrs, but the job config has no such keys. "
                "Select a tier spec with them, e.g. `tier=two_tier`."
            )
        if tier.get("strategy") != "tiers":
            raise ConfigError(
                f"hydra.sweeper.tiers needs tier.strategy=tiers, but it is {tier.get('strategy')!r}. "
                "Select a tiers spec, e.g. `override /tier: two_tier` in the sweep config."
            )

        for key in (SPLIT_KEY, LRS_KEY):
            if any(param.key == key for param in self.params):
                raise ConfigError(
                    f"{key} is sampled by both hydra.sweeper.params and hydra.sweeper.tiers. Keep one of them."
                )

        num_blocks = count_blocks()
        if self.split is None:
            split = OmegaConf.to_object(tier.split) if isinstance(tier.split, ListConfig) else tier.split
            self.fixed_split = check_split(split, num_blocks)
            self.num_tiers = len(self.fixed_split) + 1
        else:
            self._validate_split_range(num_blocks)
            self.num_tiers = self.split.count + 1

        if self.lrs is None and len(tier.lrs or []) != self.num_tiers:
            raise ConfigError(
                f"tier.lrs={OmegaConf.to_object(tier.lrs)} has {len(tier.lrs or [])} lrs, but the sampled "
                f"split gives {self.num_tiers} tiers. Add hydra.sweeper.tiers.lrs to sample them."
            )

    def _validate_split_range(self, num_blocks: int) -> None:
        split = self.split
        if split.high is None:
            split.high = num_blocks - 1
        if split.low < 0 or split.high > num_blocks:
            raise ConfigError(
                f"hydra.sweeper.tiers.split range {split.low}..{split.high} does not fit the model: it has "
                f"{num_blocks} blocks, so split points must lie in 0..{num_blocks}."
            )
        if split.high - split.low + 1 < split.count:
            raise ConfigError(
                f"hydra.sweeper.tiers.split: {split.count} strictly ascending split points cannot fit in "
                f"{split.low}..{split.high} (the model has {num_blocks} blocks). "
                "Lower count or widen low..high."
            )

    def suggest(self, trial) -> dict[str, Any]:
        """Sample every parameter for `trial` and return them by name."""
        params = {param.key: _suggest(trial, param.key, param.distribution) for param in self.params}

        if self.split is not None:
            points = []
            for index in range(self.split.count):
                low = self.split.low if index == 0 else points[-1] + 1
                # Leave room for the split points still to come.
                high = self.split.high - (self.split.count - 1 - index)
                points.append(trial.suggest_int(f"{SPLIT_KEY}.{index}", low, high))
            params.update({f"{SPLIT_KEY}.{index}": point for index, point in enumerate(points)})

        if self.lrs is not None:
            lrs = []
            for index in range(self.num_tiers):
                name = f"{LRS_KEY}.{index}"
                if self.lrs.choices is not None:
                    lrs.append(trial.suggest_categorical(name, self.lrs.choices))
                    continue
                low = max(self.lrs.low, lrs[-1]) if self.lrs.monotone and lrs else self.lrs.low
                lrs.append(trial.suggest_float(name, low, self.lrs.high, log=self.lrs.log))
            params.update({f"{LRS_KEY}.{index}": lr for index, lr in enumerate(lrs)})
        return params

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """Return the Hydra overrides that apply sampled `params` to a job."""
        overrides = []
        for param in self.params:
            value = params[param.key]
            overrides.append(f"{param.key}={value if param.hydra_text else format_value(value)}")
        if self.split is not None:
            points = [params[f"{SPLIT_KEY}.{index}"] for index in range(self.split.count)]
            overrides.append(f"{SPLIT_KEY}={format_value(points)}")
        if self.lrs is not None:
            lrs = [params[f"{LRS_KEY}.{index}"] for index in range(self.num_tiers)]
            overrides.append(f"{LRS_KEY}={format_value(lrs)}")
        return overrides

    def grid(self) -> dict[str, list]:
        """Return the grid values of each sampled parameter; raise ConfigError for a parameter without discrete values."""
        grid = {param.key: _grid_values(param) for param in self.params}
        if self.split is not None:
            if self.split.count != 1:
                raise ConfigError(
                    f"hydra.sweeper.sampler=grid supports one sampled split point, but tiers.split.count="
                    f"{self.split.count}. Use count: 1, or sampler tpe or random for several split points."
                )
            grid[f"{SPLIT_KEY}.0"] = list(range(self.split.low, self.split.high + 1))
        if self.lrs is not None:
            if self.lrs.choices is None:
                raise ConfigError(
                    "hydra.sweeper.sampler=grid needs discrete lrs: set hydra.sweeper.tiers.lrs.choices, "
                    "e.g. [1e-5, 3e-5, 1e-4]."
                )
            for index in range(self.num_tiers):
                grid[f"{LRS_KEY}.{index}"] = list(self.lrs.choices)
        return grid

    def describe(self) -> dict:
        """Return the search space as JSON-ready data, for the study name hash and the MLflow tag."""
        described = {"params": {param.key: json.loads(distribution_to_json(param.distribution)) for param in self.params}}
        if self.split is not None:
            described["tiers.split"] = vars(self.split)
        if self.lrs is not None:
            described["tiers.lrs"] = vars(self.lrs)
        return described


def parse_search_space(params: dict, tiers: dict | None, arguments: list[str], parser) -> SearchSpace:
    """Build the search space from `hydra.sweeper.params`, `hydra.sweeper.tiers` and command-line overrides.

    A command-line override replaces a `params` entry with the same key. Overrides that are
    not sweeps become fixed overrides of every job.
    """
    lines = [f"{key}={value if isinstance(value, str) else format_value(value)}" for key, value in _flatten(params)]
    lines += list(arguments)
    try:
        overrides = parser.parse_overrides(lines)
    except HydraException as error:
        raise ConfigError(f"Invalid search space or override: {error}") from error

    by_key: dict[str, Override] = {}
    for override in overrides:
        by_key[override.get_key_element()] = override

    sampled, fixed = [], []
    for key, override in by_key.items():
        if override.is_sweep_override():
            sampled.append(_param(key, override))
        else:
            fixed.append(override.input_line)

    split, lrs = _parse_tiers(tiers)
    return SearchSpace(params=sampled, fixed=fixed, split=split, lrs=lrs)


def _flatten(node, prefix=""):
    # `hydra.sweeper.params.train.lr=...` on the command line nests the key; YAML keeps it dotted.
    for key, value in node.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _flatten(value, name)
        else:
            yield name, value


def _param(key: str, override: Override) -> Param:
    if override.is_add() or override.is_delete() or override.is_force_add():
        raise ConfigError(
            f"Sweep over {key!r}: only existing config keys can be searched. Drop the prefix and add the key to the config."
        )
    sweep = override.value()
    unknown_tags = set(getattr(sweep, "tags", ())) - KNOWN_TAGS
    if unknown_tags:
        raise ConfigError(f"Sweep over {key!r}: unknown tag {sorted(unknown_tags)}. The only tag is `log`.")

    if isinstance(sweep, IntervalSweep):
        return Param(key, _interval(key, sweep.start, sweep.end, log="log" in sweep.tags))
    if "log" in getattr(sweep, "tags", ()):
        raise ConfigError(f"Sweep over {key!r}: tag(log, ...) applies to interval(...) only.")
    if isinstance(sweep, RangeSweep):
        return _range(key, override, sweep)
    if isinstance(sweep, ChoiceSweep):
        return _choice(key, sweep.list)
    raise ConfigError(
        f"Sweep over {key!r}: {override.input_line!r} is not supported. "
        "Use interval(...), int(interval(...)), tag(log, interval(...)), range(...) or choice(...)."
    )


def _interval(key: str, low, high, log: bool) -> BaseDistribution:
    if low > high:
        raise ConfigError(f"Sweep over {key!r}: low={low} is greater than high={high}. Swap them.")
    if log and low <= 0:
        raise ConfigError(f"Sweep over {key!r}: a log scale needs low > 0, got low={low}. Raise low or drop tag(log, ...).")
    if _is_int(low) and _is_int(high):
        return IntDistribution(low, high, log=log)
    return FloatDistribution(float(low), float(high), log=log)


def _range(key: str, override: Override, sweep: RangeSweep) -> Param:
    values = list(override.sweep_iterator(transformer=Transformer.identity))
    if not values:
        raise ConfigError(f"Sweep over {key!r}: {override.input_line!r} contains no values. Check start, stop and step.")
    if all(_is_int(value) for value in (sweep.start, sweep.stop, sweep.step)) and sweep.step > 0:
        return Param(key, IntDistribution(values[0], values[-1], step=sweep.step))
    return Param(key, CategoricalDistribution(values))


def _choice(key: str, choices: list) -> Param:
    if not choices:
        raise ConfigError(f"Sweep over {key!r}: choice() is empty. Give at least one value.")
    if all(choice is None or isinstance(choice, (bool, int, float, str)) for choice in choices):
        return Param(key, CategoricalDistribution(choices))
    return Param(key, CategoricalDistribution([format_value(choice) for choice in choices]), hydra_text=True)


def _parse_tiers(tiers) -> tuple[SplitSpec | None, LrsSpec | None]:
    if not tiers:
        return None, None
    unknown = set(tiers) - {"split", "lrs"}
    if unknown:
        raise ConfigError(f"hydra.sweeper.tiers has unknown keys {sorted(unknown)}. Use split and lrs.")
    split = _parse_split(tiers["split"]) if tiers.get("split") is not None else None
    lrs = _parse_lrs(tiers["lrs"]) if tiers.get("lrs") is not None else None
    if split is None and lrs is None:
        raise ConfigError("hydra.sweeper.tiers samples nothing. Set tiers.split, tiers.lrs or both, or remove tiers.")
    return split, lrs


def _parse_split(spec: dict) -> SplitSpec:
    _check_fields("hydra.sweeper.tiers.split", spec, SPLIT_FIELDS)
    if "count" not in spec:
        raise ConfigError("hydra.sweeper.tiers.split needs count: the number of split points, e.g. {count: 2}.")
    split = SplitSpec(**spec)
    for name in ("count", "low", "high"):
        value = getattr(split, name)
        if value is not None and not _is_int(value):
            raise ConfigError(f"hydra.sweeper.tiers.split.{name}={value!r} must be an integer.")
    if split.count < 1:
        raise ConfigError(f"hydra.sweeper.tiers.split.count={split.count} must be at least 1.")
    if split.high is not None and split.low > split.high:
        raise ConfigError(f"hydra.sweeper.tiers.split: low={split.low} is greater than high={split.high}. Swap them.")
    return split


def _parse_lrs(spec: dict) -> LrsSpec:
    _check_fields("hydra.sweeper.tiers.lrs", spec, LRS_FIELDS)
    lrs = LrsSpec(**spec)
    if lrs.choices is not None:
        if not lrs.choices:
            raise ConfigError("hydra.sweeper.tiers.lrs.choices is empty. Give at least one lr.")
        if lrs.low is not None or lrs.high is not None:
            raise ConfigError("hydra.sweeper.tiers.lrs: set either choices or low and high, not both.")
        if lrs.monotone:
            raise ConfigError("hydra.sweeper.tiers.lrs: monotone needs low and high, not choices.")
        if not all(_is_number(choice) and choice > 0 for choice in lrs.choices):
            raise ConfigError(f"hydra.sweeper.tiers.lrs.choices={lrs.choices} must be positive numbers.")
        return lrs

    if lrs.low is None or lrs.high is None:
        raise ConfigError("hydra.sweeper.tiers.lrs needs low and high (or choices), e.g. {low: 1e-6, high: 1e-3}.")
    if not (_is_number(lrs.low) and _is_number(lrs.high)):
        raise ConfigError(f"hydra.sweeper.tiers.lrs: low={lrs.low!r} and high={lrs.high!r} must be numbers.")
    if lrs.low > lrs.high:
        raise ConfigError(f"hydra.sweeper.tiers.lrs: low={lrs.low} is greater than high={lrs.high}. Swap them.")
    if lrs.log and lrs.low <= 0:
        raise ConfigError(f"hydra.sweeper.tiers.lrs: a log scale needs low > 0, got low={lrs.low}. Raise low or set log: false.")
    lrs.low, lrs.high = float(lrs.low), float(lrs.high)
    return lrs


def _check_fields(name: str, spec, allowed: set) -> None:
    if not isinstance(spec, dict):
        raise ConfigError(f"{name}={spec!r} must be a mapping with keys {sorted(allowed)}.")
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(f"{name} has unknown keys {sorted(unknown)}. Use {sorted(allowed)}.")


def _grid_values(param: Param) -> list:
    distribution = param.distribution
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    if distribution.step is not None:
        count = round((distribution.high - distribution.low) / distribution.step) + 1
        return [distribution.low + index * distribution.step for index in range(count)]
    raise ConfigError(
        f"hydra.sweeper.sampler=grid needs discrete values, but {param.key!r} is a continuous interval. "
        "Use choice(...) or range(...) for it."
    )


def _has_key(cfg, key: str) -> bool:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if isinstance(parent, DictConfig):
        return leaf in parent.keys()
    if isinstance(parent, ListConfig):
        return leaf.isdigit() and int(leaf) < len(parent)
    return False


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_value(value) -> str:
    """Write a Python value as Hydra override text that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if BARE_STRING.fullmatch(value) and value.lower() not in RESERVED_WORDS:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{format_value(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a Hydra override value")


def _suggest(trial, name: str, distribution: BaseDistribution):
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log, step=distribution.step)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, log=distribution.log, step=distribution.step)
    return trial.suggest_categorical(name, distribution.choices)
