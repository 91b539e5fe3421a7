"""Entry point of the training child: `python -m service.training SPEC.json`.

Exit codes: 0 done, 2 bad spec or plan (no retry helps), 3 CUDA out of memory, 4 stopped by
SIGTERM between steps, 1 anything else.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import msgspec

from service.jobs.schema import TrainingSpec
from service.procs import die_with_parent
from service.settings import load_settings
from service.storage import make_store
from service.training.events import Emitter

EXIT_BAD_INPUT, EXIT_OOM, EXIT_STOPPED = 2, 3, 4


def _out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the host allocator refusing (a runner memory cap, a full host)."""
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError)
            or "CUDA out of memory" in text or "can't allocate memory" in text)


def main(argv: list[str]) -> int:
    die_with_parent()  # a runner killed even with -9 takes its training child with it
    emit = Emitter.from_env(dict(os.environ))
    try:
        spec = msgspec.json.decode(Path(argv[1]).read_bytes(), type=TrainingSpec)
    except (IndexError, OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        emit.emit("error", code="invalid_spec", message=str(exc))
        return EXIT_BAD_INPUT
    from service.training import backends

    if backends.choose_backend(spec.backend) == "unsloth":
        # Unsloth patches transformers, TRL and PEFT as it is imported: it has to come first.
        import unsloth  # noqa: F401

    from service.training import recipe
    from service.training.callbacks import StopRequested
    from service.training.plan import PlanError

    try:
        recipe.train(spec, make_store(load_settings()), emit)
    except StopRequested as exc:
        emit.emit("stopped", message=str(exc))
        return EXIT_STOPPED
    except PlanError as exc:
        emit.emit("error", code="insufficient_gpu_memory", message=str(exc))
        return EXIT_BAD_INPUT
    except backends.TargetModulesError as exc:
        emit.emit("error", code="invalid_hyperparameters", message=str(exc))
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - reported to the runner, which decides what next
        if _out_of_memory(exc):
            emit.emit("error", code="out_of_memory", message=str(exc).splitlines()[0])
            return EXIT_OOM
        traceback.print_exc()
        emit.emit("error", code="training_error", message=f"{type(exc).__name__}: {exc}"[:2000])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
