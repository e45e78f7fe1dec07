"""Layer-wise fine-tuning harness: tiers, per-tier learning rates, sweeps and baselines."""
