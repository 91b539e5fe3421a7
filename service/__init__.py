"""tunedock: a self-hosted fine-tuning service (API, job store, runner, training child)."""

__version__ = "0.1.0"
