"""Hydra overrides that reproduce the job of an Optuna sweep trial, for reruns with other seeds.

A trial's job had three layers of overrides: the sweep's fixed overrides (recorded on the
sweep's MLflow parent run as the `fixed_overrides` tag), the tier spec that the sweep config
selected (`sweep=NAME` picks e.g. `tier=three_tier`), and the sampled trial params. A rerun
cannot pass `sweep=NAME`, because that also selects the Optuna sweeper. So the tier spec is
pinned from the `tier` node of the trial run's resolved `config.yaml` instead.
"""

import logging
import re
import tempfile
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

logger = logging.getLogger(__name__)

# The sweeper samples split points and per-tier lrs as `tier.split.<i>` and `tier.lrs.<i>`
# and passes them to the job as one list each.
INDEXED_PARAM = re.compile(r"(tier\.split|tier\.lrs)\.(\d+)")
# Study user attribute that the sweeper sets to its MLflow parent run id.
PARENT_RUN_ATTR = "mlflow_parent_run_id"
# Fixed overrides of a sweep that a rerun must not repeat. `sweep` and `hydra/sweeper` select the
# Optuna sweeper, `hydra.*` would replace the rerun's sweep directory, `optuna_trial.*`
# connects a job to a trial, and `seed` would override the rerun's seed list (Hydra keeps
# the last value of a key).
SWEEP_ONLY_KEYS = re.compile(r"sweep|optuna_trial(\..*)?|hydra/sweeper|hydra\..*|seed")


def hydra_value(value) -> str:
    """Write a Python value as Hydra override text: null, true/false, numbers, lists and dicts.

    A string is written as is when Hydra reads it back as one value that is not a sweep, and
    single-quoted otherwise (`6,10` would be a sweep over 6 and 10).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"

    text = str(value)
    try:
        if not OverridesParser.create().parse_override(f"key={text}").is_sweep_override():
            return text
    except HydraException:
        pass
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def format_override(key: str, value) -> str:
    return f"{key}={hydra_value(value)}"


def override_key(override: str) -> str:
    """Return the config key of an override (`+tier.x=1` gives `tier.x`)."""
    return override.split("=", 1)[0].lstrip("+~")


def override_value(override: str):
    """Return the value of an override as Hydra parses it."""
    return OverridesParser.create().parse_override(override).value()


def trial_overrides(params: dict) -> list[str]:
    """Return the overrides that the sweeper built from a trial's params.

    `tier.split.<i>` and `tier.lrs.<i>` are joined into `tier.split=[...]` and `tier.lrs=[...]`.
    NOTE: a categorical string param that Hydra reads as another type (`"true"`, `"4"`,
    `"[2,4]"`) is passed unquoted, which matches the sweeper for choices stored as Hydra
    text but not for plain strings that look like other types.
    """
    indexed: dict[str, dict[int, object]] = {}
    overrides = []
    for key, value in sorted(params.items()):
        match = INDEXED_PARAM.fullmatch(key)
        if match:
            indexed.setdefault(match[1], {})[int(match[2])] = value
        else:
            overrides.append(format_override(key, value))

    for key, items in sorted(indexed.items()):
        overrides.append(format_override(key, [items[index] for index in sorted(items)]))
    return overrides


def sweep_fixed_overrides(client: MlflowClient, study) -> list[str]:
    """Return the fixed overrides of the sweep that ran `study`, without the sweep-only ones.

    Reads the `fixed_overrides` tag of the study's MLflow parent run. Returns [] with a warning
    when the study or the tracking store has no parent run.
    NOTE: the tag joins the overrides with spaces, so a fixed value that contains a space is split.
    """
    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not parent_run_id:
        logger.warning("Study %r has no %s user attribute; pass the sweep's fixed overrides "
                       "(model=..., task=...) on the command line", study.study_name, PARENT_RUN_ATTR)
        return []

    try:
        tag = client.get_run(parent_run_id).data.tags.get("fixed_overrides", "")
    except MlflowException as error:
        logger.warning("Parent run %s of study %r was not found at %s (%s); pass the sweep's fixed "
                       "overrides on the command line", parent_run_id, study.study_name, client.tracking_uri,
                       error.message)
        return []
    return [item for item in tag.split() if not SWEEP_ONLY_KEYS.fullmatch(override_key(item))]


def tier_overrides(client: MlflowClient, run_id: str | None) -> list[str]:
    """Return `tier.<key>=<value>` for every key of the `tier` node in the run's config.yaml artifact.

    Returns [] with a warning when the trial has no run or the run has no config.yaml.
    """
    if not run_id:
        logger.warning("A trial has no mlflow_run_id; its rerun uses the default tier spec plus its params")
        return []

    try:
        with tempfile.TemporaryDirectory() as folder:
            path = client.download_artifacts(run_id, "config.yaml", folder)
            config = yaml.safe_load(Path(path).read_text())
    except (MlflowException, OSError) as error:
        logger.warning("Run %s has no readable config.yaml (%s); its rerun uses the default tier spec "
                       "plus the trial params", run_id, error)
        return []
    return [format_override(f"tier.{key}", value) for key, value in (config.get("tier") or {}).items()]


def merge_overrides(*layers: list[str]) -> list[str]:
    """Merge override lists in order, so that an override replaces an earlier one with the same key."""
    merged: dict[str, str] = {}
    for layer in layers:
        for override in layer:
            merged.pop(override_key(override), None)
            merged[override_key(override)] = override
    return list(merged.values())
