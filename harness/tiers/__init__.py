"""Layer discovery, depth, tier plans, param groups and freezing for layer-wise fine-tuning.

    plan = build_plan(model, cfg.tier, weight_decay=0.01)
    optimizer = torch.optim.AdamW(plan.param_groups)
    print(plan.render())

See `discovery` for the depth rules and `spec` for the tier config keys.
"""

from harness.tiers.discovery import BlockStack, ModelDepths, map_depths
from harness.tiers.plan import TierPlan, TierRow, build_plan, param_groups
from harness.tiers.prefix import FrozenPrefix
from harness.tiers.spec import Tier, TierSpec, parse_spec

__all__ = [
    "BlockStack",
    "FrozenPrefix",
    "ModelDepths",
    "Tier",
    "TierPlan",
    "TierRow",
    "TierSpec",
    "build_plan",
    "map_depths",
    "param_groups",
    "parse_spec",
]
