"""Sweep configs that the harness_optuna sweeper rejects with ConfigError before any trial.

The checks run in-process in the order the sweeper runs them: settings, search space,
keys and split range against the composed job config, then the grid.
"""

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.trial import build_pruner, check_split, open_storage
from hydra_plugins.harness_optuna_sweeper._impl import absolute_storage_url, check_settings, display_url
from hydra_plugins.harness_optuna_sweeper._search_space import format_value, parse_search_space
from hydra_plugins.harness_optuna_sweeper.config import HarnessOptunaSweeperConf

JOB = {
    "x": 0.5,
    "train": {"lr": 1e-4, "batch_size": 16},
    "tier": {"strategy": "tiers", "split": [2], "lrs": [1e-4, 1e-4], "lr": None, "decay": None},
}
NUM_BLOCKS = 4


def defaults() -> dict:
    settings = OmegaConf.to_container(OmegaConf.structured(HarnessOptunaSweeperConf))
    settings.pop("_target_")
    return settings


def check(settings=None, arguments=(), job=None):
    """Run the sweeper's checks; return the search space."""
    merged = {**defaults(), **(settings or {})}
    check_settings(merged)
    space = parse_search_space(merged["params"], merged["tiers"], list(arguments), OverridesParser.create())
    space.validate(OmegaConf.create(job or JOB), lambda: NUM_BLOCKS)
    if merged["sampler"] == "grid":
        space.grid()
    return space


BAD_CONFIGS = [
    ("unknown key", {"params": {"train.lrr": "interval(0.1, 0.2)"}}, "'train.lrr' is not a key of the job config"),
    ("unknown key on command line", {}, "'nope' is not a key of the job config", ["nope=choice(1,2)"]),
    ("low above high", {"params": {"x": "interval(2.0, 1.0)"}}, "low=2.0 is greater than high=1.0"),
    ("log with zero low", {"params": {"train.lr": "tag(log, interval(0.0, 1.0))"}}, "a log scale needs low > 0"),
    ("empty choices", {"params": {"x": "choice()"}}, "empty choice is not legal"),
    ("unknown tag", {"params": {"x": "tag(lg, interval(1.0, 2.0))"}}, "unknown tag ['lg']"),
    ("n_trials zero", {"n_trials": 0}, "hydra.sweeper.n_trials=0 is invalid"),
    ("negative seed", {"seed": -1}, "hydra.sweeper.seed=-1 is invalid: expected an integer >= 0"),
    ("grace period within a heartbeat", {"heartbeat_interval": 4, "grace_period": 4}, "must be greater than hydra.sweeper.heartbeat_interval=4"),
    ("unknown sampler", {"sampler": "bayes"}, "hydra.sweeper.sampler='bayes' is not a known sampler"),
    ("unknown pruner", {"pruner": "patient"}, "hydra.sweeper.pruner='patient' is not a known pruner"),
    ("bad pruner option", {"pruner_options": {"median": {"warmup": 1}}}, "is invalid for MedianPruner"),
    ("options not by name", {"sampler_options": {"n_startup_trials": 3}}, "which are not sampler names"),
    ("direction typo", {"direction": "maximise"}, "'maximise' is not maximize or minimize"),
    ("directions and objectives differ", {"direction": ["maximize", "minimize"]}, "Give one direction per objective"),
    (
        "pruner with two objectives",
        {"direction": ["maximize", "minimize"], "objectives": ["best_val_metric", "trainable_params"]},
        "Optuna cannot prune a multi-objective study",
    ),
    (
        "cmaes with two objectives",
        {"sampler": "cmaes", "pruner": None, "direction": ["maximize", "minimize"], "objectives": ["a", "b"]},
        "supports one objective",
    ),
    ("split cannot fit", {"tiers": {"split": {"count": 4, "low": 1}}}, "4 strictly ascending split points cannot fit in 1..3"),
    ("split beyond model", {"tiers": {"split": {"count": 1, "low": 1, "high": 9}}}, "does not fit the model: it has 4 blocks"),
    ("split low above high", {"tiers": {"split": {"count": 1, "low": 3, "high": 2}}}, "low=3 is greater than high=2"),
    ("split without count", {"tiers": {"split": {"low": 1}}}, "needs count"),
    ("lrs low above high", {"tiers": {"lrs": {"low": 1e-3, "high": 1e-5}}}, "low=0.001 is greater than high=1e-05"),
    ("lrs log with zero low", {"tiers": {"lrs": {"low": 0.0, "high": 1e-3}}}, "a log scale needs low > 0"),
    ("lrs empty choices", {"tiers": {"lrs": {"choices": []}}}, "choices is empty"),
    ("unknown tiers key", {"tiers": {"splits": {"count": 1}}}, "unknown keys ['splits']"),
    ("lrs count mismatch", {"tiers": {"split": {"count": 2}}}, "has 2 lrs, but the sampled split gives 3 tiers"),
    ("grid over interval", {"sampler": "grid", "params": {"x": "interval(0.0, 1.0)"}}, "grid needs discrete values"),
    ("grid over several splits", {"sampler": "grid", "tiers": {"split": {"count": 2}, "lrs": {"choices": [1e-5]}}}, "supports one sampled split point"),
]


@pytest.mark.parametrize(
    "settings, message, arguments",
    [(case[1], case[2], case[3] if len(case) > 3 else []) for case in BAD_CONFIGS],
    ids=[case[0] for case in BAD_CONFIGS],
)
def test_bad_sweep_config_raises(settings, message, arguments):
    with pytest.raises(ConfigError) as raised:
        check(settings, arguments)
    assert message in str(raised.value)


def test_tiers_search_needs_tiers_strategy():
    job = {**JOB, "tier": {**JOB["tier"], "strategy": "llrd"}}
    with pytest.raises(ConfigError, match="needs tier.strategy=tiers, but it is 'llrd'"):
        check({"tiers": {"lrs": {"low": 1e-5, "high": 1e-3}}}, job=job)


def test_fixed_split_out_of_range_raises():
    job = {**JOB, "tier": {**JOB["tier"], "split": [2, 6]}}
    with pytest.raises(ConfigError, match=r"tier.split=\[2, 6\] is out of range: the model has 4 blocks"):
        check({"tiers": {"lrs": {"low": 1e-5, "high": 1e-3}}}, job=job)


def test_check_split_rejects_unsorted_points():
    with pytest.raises(ConfigError, match="must be strictly ascending"):
        check_split([3, 3], 4)
    assert check_split(2, 4) == [2]


def test_valid_space_splits_fixed_and_sampled():
    space = check(
        {"params": {"x": "interval(0.0, 1.0)", "train.batch_size": 32}},
        arguments=["train.lr=tag(log, interval(1e-5, 1e-3))", "seed=3"],
    )
    assert sorted(param.key for param in space.params) == ["train.lr", "x"]
    assert sorted(space.fixed) == ["seed=3", "train.batch_size=32"]
    assert space.num_tiers is None


def test_command_line_replaces_params_entry():
    space = check({"params": {"x": "interval(0.0, 1.0)"}}, arguments=["x=choice(0.1,0.2)"])
    assert [type(param.distribution).__name__ for param in space.params] == ["CategoricalDistribution"]


def test_overrides_join_split_and_lrs():
    space = check({"tiers": {"split": {"count": 2, "low": 1}, "lrs": {"low": 1e-5, "high": 1e-3}}})
    params = {"tier.split.0": 1, "tier.split.1": 3, "tier.lrs.0": 1e-5, "tier.lrs.1": 2e-5, "tier.lrs.2": 3e-4}
    assert space.overrides(params) == ["tier.split=[1,3]", "tier.lrs=[1e-05,2e-05,0.0003]"]
    assert space.split.high == NUM_BLOCKS - 1


def test_list_choices_pass_as_hydra_text():
    space = check(arguments=["tier.split=choice([1],[1,3])"])
    assert space.params[0].distribution.choices == ("[1]", "[1,3]")
    assert space.overrides({"tier.split": "[1,3]"}) == ["tier.split=[1,3]"]


@pytest.mark.parametrize(
    "value, text",
    [(None, "null"), (True, "true"), (3, "3"), (1e-05, "1e-05"), ("adamw", "adamw"), ("a b", "'a b'"),
     ("true", "'true'"), ("/tmp/x.db", "'/tmp/x.db'"), ([1, 2.5], "[1,2.5]")],
)
def test_format_value_writes_hydra_text(value, text):
    assert format_value(value) == text


def test_storage_paths_become_absolute(tmp_path):
    assert absolute_storage_url("optuna.journal", tmp_path) == str(tmp_path / "optuna.journal")
    assert absolute_storage_url("sqlite:///sub/optuna.db", tmp_path) == f"sqlite:///{tmp_path}/sub/optuna.db"
    assert absolute_storage_url("sqlite:////abs/optuna.db", tmp_path) == "sqlite:////abs/optuna.db"
    assert absolute_storage_url("postgresql+psycopg://u:p@h/db", tmp_path) == "postgresql+psycopg://u:p@h/db"


def test_display_url_hides_password():
    assert display_url("postgresql+psycopg://harness:secret@127.0.0.1:5432/db") == (
        "postgresql+psycopg://harness:***@127.0.0.1:5432/db"
    )


def test_build_pruner_without_name_never_prunes():
    assert type(build_pruner(None)).__name__ == "NopPruner"


@pytest.mark.parametrize(
    "storage, message",
    [
        ("/nonexistent/folder/optuna.journal", "the folder '/nonexistent/folder' does not exist"),
        # Port 1 on loopback has no server, so the connection is refused at once.
        ("postgresql+psycopg://user:secret@127.0.0.1:1/optuna", "Failed to open the Optuna storage postgresql+psycopg://user:***@"),
    ],
)
def test_unusable_storage_raises(storage, message):
    with pytest.raises(ConfigError) as error:
        open_storage(storage, heartbeat_interval=60)
    assert message in str(error.value)
    assert "secret" not in str(error.value)
