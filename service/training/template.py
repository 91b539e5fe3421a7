"""The fork server: `python -m service.training --template` imports the training stack once, then
forks a warm child whenever the runner asks, so a job's child starts in milliseconds instead of
importing torch, transformers, TRL and PEFT again (~10 s of CPU each on a 2-core machine).

Used for CPU slots only. On a GPU, Unsloth initialises CUDA as it is imported, and a CUDA context
does not survive fork; GPU slots keep one `--warm` child each, started the usual way.

Once imported, the template says so on stdout (Imported; libraries' own prints go to its log). The runner sends a ForkRequest on a Unix
socket (TUNEDOCK_TEMPLATE_FD) with two file descriptors attached: the read end of the child's job
pipe (its stdin) and the write end of its events pipe. The template answers on stdout: Forked(pid),
and Exited(pid, code) once it has reaped that child. The template dies with the runner; each child
dies with the template (PR_SET_PDEATHSIG). Messages: service/contracts/messages.py."""

from __future__ import annotations

import os
import resource
import select
import socket
import sys
import traceback

import msgspec

from service.contracts import messages as m
from service.procs import die_with_parent

_requests = msgspec.json.Decoder(m.ForkRequest)


def _child(request: m.ForkRequest, job_fd: int, events_fd: int, sock: socket.socket,
           control: int) -> int:
    """In the forked child: become a warm child of its own session, then wait for the job."""
    sock.close()
    os.close(control)  # the template's answers are the template's alone
    os.setsid()  # the runner signals the child's process group, as with a started child
    die_with_parent()
    if request.memory_limit_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (request.memory_limit_bytes,) * 2)
    os.dup2(job_fd, 0)
    os.close(job_fd)
    log_fd = os.open(request.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdin = os.fdopen(0, "r")
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    os.environ["TUNEDOCK_EVENTS_FD"] = str(events_fd)
    from service.training.child import main

    return main(["service.training", "--warm"])


def serve(sock: socket.socket) -> int:
    from service.training.child import import_stack_for

    # The answers go on a private copy of stdout; fd 1 itself joins the log, so whatever a
    # library prints cannot end up among them.
    control = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(control, "wb")
    out.write(msgspec.json.encode(m.Imported(backend=import_stack_for("auto"))) + b"\n")
    out.flush()
    children: set[int] = set()
    while True:
        ready, _, _ = select.select([sock], [], [], 0.2)
        if ready:
            try:
                data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 2)
            except OSError:
                data, fds = b"", []
            if not data:  # the runner closed its end: done (children die with us)
                return 0
            request = _requests.decode(data)
            job_fd, events_fd = fds
            out.flush()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = _child(request, job_fd, events_fd, sock, control)
                except BaseException:  # noqa: BLE001 - the child's log keeps why; it must not return
                    traceback.print_exc()
                finally:
                    os._exit(code)
            os.close(job_fd)
            os.close(events_fd)
            children.add(pid)
            out.write(msgspec.json.encode(m.Forked(pid=pid)) + b"\n")
            out.flush()
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                out.write(msgspec.json.encode(m.Exited(pid=pid, code=os.waitstatus_to_exitcode(status)))
                          + b"\n")
                out.flush()


def main() -> int:
    die_with_parent()
    fd = int(os.environ["TUNEDOCK_TEMPLATE_FD"])
    return serve(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=fd))
