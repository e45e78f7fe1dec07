"""Analysis of harness runs: MLflow runs to tidy tables, seed statistics, plots and reports.

Modules: `load` (MLflow runs and Optuna studies to a DataFrame), `compare` (seed
statistics, bootstrap CIs, paired differences against the baseline), `plots`,
`report` (`python -m analysis.report`), `confirm` (`python -m analysis.confirm`) and
`overrides` (Hydra overrides that reproduce a sweep trial's job).
"""
