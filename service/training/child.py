"""The training child: one job, one export, or a warm child waiting for a job (the modes and the
runner's side of them: __main__.py). Exit codes and the messages on the events pipe:
service/contracts/messages.py."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import msgspec

from service.contracts import messages as m
from service.contracts.messages import Emitter, TrainingSpec
from service.procs import die_with_parent
from service.settings import load_settings
from service.storage import make_store
from service.training import stop


def out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the host allocator refusing (a runner memory cap, a full host)."""
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError)
            or "CUDA out of memory" in text or "can't allocate memory" in text)


def _first_lines(text: str, limit: int = 600) -> str:
    """CUDA's message spans lines (requested, total, free, reserved); keep it whole but short."""
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())[:limit]


def storage_failure(exc: BaseException) -> m.Failed | None:
    """An object-store or file-system error in words a user can act on (never botocore's or the
    OS's raw text, which name internal endpoints and paths; the child's log keeps those), or None
    for any other error. `missing` and `denied` are permanent: no retry helps."""
    from service.storage import storage_error_kind

    if type(exc).__module__.startswith("botocore"):
        match storage_error_kind(exc):
            case "missing":
                return m.Failed(code="object_not_found", message=(
                    "an object the job needs (its training data, a checkpoint or the parent "
                    "adapter) is no longer in the object store; upload it again and start a new job"))
            case "denied":
                return m.Failed(code="object_store_denied", message=(
                    "the object store refused the runner access to an object the job needs; an "
                    "operator must grant the runner's credentials access to it"))
            case _:
                return m.Failed(code="object_store_unavailable", message=(
                    "the object store failed while the job was running; the job is retried from "
                    "its latest checkpoint"))
    if isinstance(exc, OSError) and not out_of_memory(exc):
        what = exc.strerror or type(exc).__name__
        return m.Failed(code="runner_storage_error", message=(
            f"the runner's disk failed the job ({what}); the job is retried from its latest checkpoint"))
    return None


def _import_stack(backend: str) -> None:
    if backend == "unsloth":
        # Unsloth compiles each decoder block with torch.compile on the first step: on an H100
        # (1B Llama, QLoRA r16, 8 x 1024) that cost 30-40 s before the first step and gave no
        # steady-state gain (41,090 tokens/s without it vs 38,856 with, 1.83 vs 2.21 GiB peak;
        # bench/RESULTS.md). Off unless the operator sets UNSLOTH_BLOCK_COMPILE.
        os.environ.setdefault("UNSLOTH_BLOCK_COMPILE", "0")
        # Unsloth patches transformers, TRL and PEFT as it is imported: it has to come first.
        import unsloth  # noqa: F401
    import trl  # noqa: F401

    if backend != "unsloth":  # (Unsloth's import has loaded what it patches, its own way)
        # What every job needs, imported now rather than on the job's clock: transformers and
        # TRL load their submodules lazily, on first use.
        import datasets  # noqa: F401
        from peft import LoraConfig, get_peft_model  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
        from trl import DPOTrainer, SFTTrainer  # noqa: F401

    from service.training import recipe  # noqa: F401


def import_stack_for(backend: str) -> str:
    """Import what training with `backend` needs; the backend "auto" resolves to, on this host."""
    from service.training import backends

    chosen = backends.choose_backend(backend)
    _import_stack(chosen)
    return chosen


def _wait_for_job(emit: Emitter) -> str | None:
    """Warm mode: import for the backend "auto" picks (the runner hands a warm child only specs
    with backend "auto"), then take a job's spec from stdin."""
    warmed = import_stack_for("auto")
    emit.emit(m.Ready(backend=warmed))
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return None
    job = msgspec.json.decode(line, type=dict[str, str])  # {"spec": path, "log": path}
    spec_path, log_path = job["spec"], job["log"]
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    return spec_path


def main(argv: list[str]) -> int:
    """One job, or a warm child waiting for one: see __main__.py's usage."""
    die_with_parent()  # a runner killed even with -9 takes its training child with it
    from service.training import ranks

    if argv[1:2] == ["--ranks"] and len(argv) == 4:  # one job on several devices: ranks.py
        return ranks.launch(int(argv[2]), argv[3])
    emit = Emitter.from_env(dict(os.environ))
    if not ranks.is_main():  # only rank 0 reports; the others' words go to the log
        emit = Emitter(sys.stderr)
    # Before anything slow: a stop asked for while we import or load is a clean stop, not a -15.
    stop.install()
    spec_path = _wait_for_job(emit) if argv[1:] == ["--warm"] else (argv[1:] or [""])[0]
    if spec_path is None:
        return 0
    try:
        spec = msgspec.json.decode(Path(spec_path).read_bytes(), type=TrainingSpec)
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        emit.emit(m.Failed(code="invalid_spec", message=str(exc)))
        return m.EXIT_BAD_INPUT
    from service.training import backends
    from service.training.plan import PlanError

    try:
        # Several ranks join their process group first: every stop check after this is agreed.
        ranks.init("cuda" if spec.ranks > 1 and backends.cuda_available() else "cpu")
        stop.check("before the training stack was imported")
        _import_stack(backends.choose_backend(spec.backend))
        from service.training import recipe

        recipe.train(spec, make_store(load_settings()), emit)
    except stop.StopRequested as exc:
        emit.emit(m.Stopped(message=str(exc), trained=exc.trained))
        return m.EXIT_STOPPED
    except PlanError as exc:
        emit.emit(m.Failed(code="insufficient_gpu_memory", message=str(exc)))
        return m.EXIT_BAD_INPUT
    except backends.TargetModulesError as exc:
        emit.emit(m.Failed(code="invalid_hyperparameters", message=str(exc)))
        return m.EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - reported to the runner, which decides what next
        traceback.print_exc()  # the child's log keeps the whole allocator message
        if out_of_memory(exc):
            # The allocator's own words: what was requested and what was free.
            emit.emit(m.Failed(code="out_of_memory", message=_first_lines(str(exc))))
            return m.EXIT_OOM
        if (failed := storage_failure(exc)) is not None:
            emit.emit(failed)
            permanent = failed.code in ("object_not_found", "object_store_denied")
            return m.EXIT_BAD_INPUT if permanent else m.EXIT_FAILED
        emit.emit(m.Failed(code="training_error", message=f"{type(exc).__name__}: {exc}"[:2000]))
        return m.EXIT_FAILED
    return m.EXIT_OK
