"""Optuna samplers by name, seeded, with per-sampler options from the sweep config."""

import optuna

from harness.errors import ConfigError

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    # Grid points reach their trials as fixed params (see _grid.py), so this sampler never samples.
    "grid": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
}
SINGLE_OBJECTIVE_SAMPLERS = {"cmaes"}


def check_sampler(name: str, num_objectives: int) -> None:
    """Raise ConfigError for an unknown sampler or one that cannot handle `num_objectives`."""
    if name not in SAMPLERS:
        raise ConfigError(f"hydra.sweeper.sampler={name!r} is not a known sampler. Use one of: {', '.join(SAMPLERS)}.")
    if name in SINGLE_OBJECTIVE_SAMPLERS and num_objectives > 1:
        raise ConfigError(
            f"hydra.sweeper.sampler={name} supports one objective, but {num_objectives} are set. "
            "Use nsga2, tpe or random for a multi-objective sweep."
        )


def build_sampler(name: str, options, seed: int):
    """Build the sampler `name` with `options` (keyword arguments) and `seed`."""
    kwargs = {"seed": seed, **dict(options or {})}
    try:
        return SAMPLERS[name](**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"hydra.sweeper.sampler_options.{name}={dict(options or {})} is invalid for "
            f"{SAMPLERS[name].__name__}: {error}. Fix or remove the option."
        ) from error
