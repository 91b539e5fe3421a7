"""Entry point of the export child: `python -m service.exports SPEC.json` (started by the runner's
service/runner/export_run.py). One export from its spec (build.py), its progress and outcome as
messages on the events pipe (service/contracts/messages.py). An export stops on SIGTERM's default
action, at once: it has no resume point to save."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import msgspec

from service.contracts import messages as m
from service.contracts.messages import Emitter
from service.procs import die_with_parent
from service.settings import load_settings
from service.storage import make_store
from service.training.child import out_of_memory


def main(argv: list[str]) -> int:
    die_with_parent()  # a runner killed even with -9 takes its export child with it
    emit = Emitter.from_env(dict(os.environ))
    if len(argv) != 2:
        emit.emit(m.Failed(code="invalid_spec", message="usage: python -m service.exports SPEC.json"))
        return m.EXIT_BAD_INPUT
    return export(Path(argv[1]), emit)


def export(spec_path: Path, emit: Emitter) -> int:
    from service.exports import ExportError, build

    try:
        spec = msgspec.json.decode(spec_path.read_bytes(), type=m.ExportSpec)
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        emit.emit(m.Failed(code="invalid_spec", message=str(exc)))
        return m.EXIT_BAD_INPUT
    try:
        build.run(spec, make_store(load_settings()), emit)
    except ExportError as exc:
        emit.emit(m.Failed(code=exc.code, message=str(exc)))
        return m.EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - reported to the runner, which retries
        traceback.print_exc()
        code = "out_of_memory" if out_of_memory(exc) else "export_failed"
        emit.emit(m.Failed(code=code, message=f"{type(exc).__name__}: {exc}"[:2000]))
        return m.EXIT_FAILED
    return m.EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv))
