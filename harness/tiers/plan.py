"""The tier plan: tiers, their param groups for torch.optim, and the tier table.

Weight decay applies to tensors of rank >= 2 outside normalisation layers. Biases, other 1-D
tensors and every parameter of a normalisation layer (by module type) get no weight decay.
So each tier gives up to two param groups, with and without decay, both tagged with the tier name.

Frozen tiers are left out of the optimizer. Tiers that gradual unfreezing has not reached are in
the optimizer from the start with requires_grad=False, so LR schedulers know every group.
"""

import logging
import math
from dataclasses import asdict, dataclass

import pandas as pd
from torch import nn

from harness.errors import ConfigError
from harness.tiers.discovery import ModelDepths, is_norm, map_depths
from harness.tiers.freezing import GradualUnfreezing, set_requires_grad, set_train_mode
from harness.tiers.spec import Tier, layout_tiers, parse_spec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TierRow:
    """One line of the tier table.

    `num_trainable` counts the parameters in the optimizer, including those of tiers that
    gradual unfreezing has not reached yet. `frozen` marks a tier frozen for the whole run.
    """

    name: str
    first_depth: int
    last_depth: int
    layers: str
    num_params: int
    num_trainable: int
    lr: float
    weight_decay: float
    frozen: bool


class TierPlan:
    """Tiers of one model, their param groups, and the freezing state during training."""

    def __init__(self, model: nn.Module, depths: ModelDepths, tiers: list[Tier], unfreeze, weight_decay: float):
        self.num_blocks = depths.num_blocks
        self.param_depth = depths.param_depth
        self.tiers = tiers
        self._stacks = depths.stacks

        # Unique tensors and modules of each tier, by depth.
        tier_of_depth = {d: tier.name for tier in tiers for d in range(tier.first_depth, tier.last_depth + 1)}
        self._params = {tier.name: [] for tier in tiers}
        for name, param in model.named_parameters():
            self._params[tier_of_depth[self.param_depth[name]]].append(param)
        self._modules = {tier.name: [] for tier in tiers}
        for module, depth in depths.module_depth.items():
            self._modules[tier_of_depth[depth]].append(module)

        # Freezing: frozen tiers for the whole run, then the tiers gradual unfreezing starts later.
        self._unfreezing = GradualUnfreezing(unfreeze, tiers) if unfreeze else None
        self._frozen_now = {tier.name for tier in tiers if tier.frozen}
        if self._unfreezing:
            self._frozen_now.update(self._unfreezing.waiting())
        for tier in tiers:
            set_requires_grad(self._params[tier.name], tier.name not in self._frozen_now)

        self.param_groups = _param_groups(model, tiers, self._params, weight_decay)
        _check_coverage(model, self.param_groups, [self._params[t.name] for t in tiers if t.frozen])
        self.rows = [self._row(tier, weight_decay) for tier in tiers]

    @property
    def tier_names(self) -> list[str]:
        return [tier.name for tier in self.tiers]

    @property
    def tier_lrs(self) -> dict[str, float]:
        return {tier.name: tier.lr for tier in self.tiers}

    @property
    def stacks(self) -> list:
        """The block stacks of the model, in depth order (see `harness.tiers.discovery`)."""
        return self._stacks

    @property
    def frozen_prefix_depth(self) -> int | None:
        """Highest depth d such that depths 0..d stay frozen for the whole run, or None."""
        depth = None
        for tier in self.tiers:
            if not tier.frozen:
                break
            depth = tier.last_depth
        return depth

    def depth_label(self, depth: int) -> str:
        """Return "embeddings" for depth 0, "block i" for depth i + 1, and "head" for depth L + 1."""
        if depth == 0:
            return "embeddings"
        if depth == self.num_blocks + 1:
            return "head"
        return f"block {depth - 1}"

    def train_mode(self, model: nn.Module) -> None:
        """Put `model` in train mode, except the modules of frozen tiers, which stay in eval mode."""
        set_train_mode(model, [m for name in self._frozen_now for m in self._modules[name]])

    def update_unfreezing(self, epoch: int, step: int) -> list[str]:
        """Unfreeze the tiers due at this 0-based epoch and optimizer step, and return their names.

        Call it at the start of every epoch and optimizer step during training. The unfrozen
        tiers get requires_grad=True and train mode. Returns [] when nothing is due.
        """
        if self._unfreezing is None:
            return []

        due = self._unfreezing.advance(epoch, step)
        for name in due:
            set_requires_grad(self._params[name], True)
            for module in self._modules[name]:
                module.train()
            self._frozen_now.discard(name)
        return due

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(row) for row in self.rows])

    def render(self) -> str:
        """Return the tier table as aligned plain text, with the block stacks and any unfreezing order."""
        header = ["tier", "depths", "layers", "params", "trainable", "lr", "weight_decay", "state"]
        lines = [
            [
                row.name,
                _depth_range(row.first_depth, row.last_depth),
                row.layers,
                f"{row.num_params:,}",
                f"{row.num_trainable:,}",
                f"{row.lr:.2e}",
                f"{row.weight_decay:g}",
                self._state(row.name),
            ]
            for row in self.rows
        ]
        total = sum(row.num_params for row in self.rows)
        trainable = sum(row.num_trainable for row in self.rows)
        lines.append(["total", "", "", f"{total:,}", f"{trainable:,}", "", "", ""])
        text = _align(header, lines, right=("params", "trainable", "lr", "weight_decay"))

        stacks = ", ".join(f"{s.path} ({s.num_blocks} x {s.block_class})" for s in self._stacks)
        text += f"\n{self.num_blocks} blocks: {stacks}"
        if self._unfreezing:
            text += (
                f"\ngradual unfreezing: {self._unfreezing.order[0]} trains first, then "
                f"{', '.join(self._unfreezing.order[1:])}, one more every "
                f"{self._unfreezing.every} {self._unfreezing.unit}(s)"
            )
        return text

    def _state(self, name) -> str:
        if name not in self._frozen_now:
            return "trains"
        if self._unfreezing and name in self._unfreezing.waiting():
            return "waits"
        return "frozen"

    def _row(self, tier, weight_decay) -> TierRow:
        num_params = sum(param.numel() for param in self._params[tier.name])
        return TierRow(
            name=tier.name,
            first_depth=tier.first_depth,
            last_depth=tier.last_depth,
            layers=self._layers_text(tier),
            num_params=num_params,
            num_trainable=0 if tier.frozen else num_params,
            lr=tier.lr,
            weight_decay=0.0 if tier.frozen else weight_decay,
            frozen=tier.frozen,
        )

    def _layers_text(self, tier) -> str:
        parts = []
        if tier.first_depth == 0:
            parts.append("embeddings")
        first_block = max(tier.first_depth, 1) - 1
        last_block = min(tier.last_depth, self.num_blocks) - 1
        if first_block == last_block:
            parts.append(f"block {first_block}")
        elif first_block < last_block:
            parts.append(f"blocks {first_block}-{last_block}")
        if tier.last_depth == self.num_blocks + 1:
            parts.append("head")
        return " + ".join(parts)


def build_plan(model: nn.Module, tier, weight_decay: float = 0.0) -> TierPlan:
    """Validate the tier config against `model`, freeze its frozen tiers, and return the plan.

    `tier` is a dict or DictConfig with the keys of `conf/tier/*.yaml`. Raises ConfigError for an
    invalid config before the model's parameters change.
    """
    spec = parse_spec(tier)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) \
            or not math.isfinite(weight_decay) or weight_decay < 0:
        raise ConfigError(f"weight_decay={weight_decay!r} must be a finite number >= 0, such as 0.01")

    depths = map_depths(model)
    tiers = layout_tiers(spec, depths)
    plan = TierPlan(model, depths, tiers, spec.unfreeze, float(weight_decay))

    for row in plan.rows:
        if row.num_params == 0:
            logger.warning("Tier %s (%s) has no parameters", row.name, row.layers)
    return plan


def param_groups(model: nn.Module, tier, weight_decay: float = 0.0) -> list[dict]:
    """Return the param groups of `build_plan(model, tier, weight_decay)`, for torch.optim.AdamW."""
    return build_plan(model, tier, weight_decay).param_groups


def _param_groups(model, tiers, params_by_tier, weight_decay) -> list[dict]:
    no_decay = _no_decay_params(model)
    groups = []
    for tier in tiers:
        if tier.frozen:
            continue
        params = params_by_tier[tier.name]
        decay_params = [p for p in params if p not in no_decay]
        no_decay_params = [p for p in params if p in no_decay]
        for group_params, group_decay in ((decay_params, weight_decay), (no_decay_params, 0.0)):
            if group_params:
                groups.append({"params": group_params, "lr": tier.lr, "weight_decay": group_decay, "tier": tier.name})

    num_decay = sum(p.numel() for g in groups if g["weight_decay"] > 0 for p in g["params"])
    num_no_decay = sum(p.numel() for g in groups if g["weight_decay"] == 0 for p in g["params"])
    logger.info(
        "%d param groups in %d tiers: %s parameters with weight decay %g, %s without",
        len(groups), len(tiers), f"{num_decay:,}", weight_decay, f"{num_no_decay:,}",
    )
    return groups


def _no_decay_params(model) -> set:
    # Rule: tensors of rank < 2 and parameters of normalisation layers get no weight decay.
    no_decay = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.ndim < 2 or is_norm(module):
                no_decay.add(param)
    return no_decay


def _check_coverage(model, groups, frozen_param_lists) -> None:
    # Every tensor outside frozen tiers is in exactly one param group.
    in_groups = [p for group in groups for p in group["params"]]
    frozen = {p for params in frozen_param_lists for p in params}
    expected = {p for p in model.parameters() if p not in frozen}
    if len(in_groups) != len(set(in_groups)) or set(in_groups) != expected:
        raise RuntimeError(
            f"param groups hold {len(set(in_groups))} unique of {len(in_groups)} tensors, but the "
            f"model has {len(expected)} tensors outside frozen tiers; the tier plan is inconsistent"
        )


def _depth_range(first, last) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _align(header, lines, right) -> str:
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    out = []
    for row in [header, *lines]:
        cells = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for cell, width, column in zip(row, widths, header)
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
