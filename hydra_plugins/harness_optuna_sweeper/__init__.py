"""Hydra sweeper plugin that drives an Optuna study with ask and tell (`hydra/sweeper=harness_optuna`)."""
