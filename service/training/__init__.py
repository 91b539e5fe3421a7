"""The training child: `python -m service.training SPEC.json`. Reads a TrainingSpec, trains a LoRA
adapter, uploads a checkpoint every epoch and the final adapter, and reports JSON lines on the
file descriptor named by TUNEDOCK_EVENTS_FD. It never touches the database."""
