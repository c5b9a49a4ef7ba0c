"""The pipeline engine: run lifecycle, stages, RQ jobs, locks, billing, recovery (README table)."""
