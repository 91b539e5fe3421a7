"""The process a python grader runs in (started by sandbox.py as `python -I` this file; stdlib
only, since it must not import tunedock). Before the user's code runs it lowers its own limits
(CPU seconds, address space, file size, open files), leaves the network (a new network namespace,
where the kernel allows it), moves into its scratch folder and installs an audit hook that refuses
sockets, new processes, ctypes, and any file outside the scratch folder except reading Python's
own installation. It reads {source, sample, item, limits} as JSON on stdin and writes one JSON
line to its stdout's real descriptor: {"score": …} or {"error": …, "kind": …}. What the grader
prints is kept (capped) for the error report, never mixed with the answer."""

import ctypes
import io
import json
import math
import os
import resource
import sys
import traceback

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
FORBIDDEN = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
             "os.forkpty", "pty.", "ctypes.", "sys.addaudithook", "os.kill", "os.killpg", "signal.pthread_kill",
             "shutil.", "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.", "imaplib.", "poplib.",
             "nntplib.", "telnetlib.", "os.putenv", "os.unsetenv", "sys.remote_exec")
TWO_PATHS = {"os.rename", "os.link", "os.symlink"}  # os.replace raises os.rename
PATH_EVENTS = {"open", "os.listdir", "os.scandir", "os.chdir", "os.remove", "os.rmdir",
               "os.mkdir", "os.chmod", "os.chown", "os.utime", "os.truncate",
               "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod", "glob.glob", "os.getxattr",
               "os.listxattr", "os.removexattr", "os.setxattr", "tempfile.mkstemp", "tempfile.mkdtemp"}
# Reading is allowed in Python's installation too; a chdir is not (only into the scratch folder).
READ_ONLY = {"open", "os.listdir", "os.scandir", "glob.glob", "os.getxattr", "os.listxattr"}


def _leave_network() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) == 0:
        return "network namespace"
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        return "user and network namespace"
    return "audit hook only"


def main() -> None:
    job = json.loads(sys.stdin.read())
    real_stdout = os.dup(1)
    limits = job["limits"]
    scratch = os.path.realpath(job["scratch"])
    network = _leave_network()
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.chdir(scratch)
    readable = tuple(os.path.realpath(p) + os.sep for p in
                     {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
    printed = io.StringIO()

    def answer(payload: dict) -> None:
        payload["network"] = network
        payload["printed"] = printed.getvalue()[-2000:]
        os.write(real_stdout, (json.dumps(payload) + "\n").encode())

    def allowed(path: object, write: bool, opening: bool = False) -> bool:
        if isinstance(path, int):  # an open descriptor: already allowed when it was opened
            return True
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        if not isinstance(path, str):
            return False
        # Against the real working directory, symlinks resolved: a relative path after a chdir,
        # or a link in the scratch folder, must not name a file outside it.
        full = os.path.realpath(path)
        if full == scratch or full.startswith(scratch + os.sep):
            return True
        # A directory outside the scratch folder is never opened: its descriptor as `dir_fd`
        # would make a relative path land in it, and the audit event does not carry dir_fd.
        return not write and full.startswith(readable) and not (opening and os.path.isdir(full))

    def hook(event: str, args: tuple) -> None:
        if event.startswith(FORBIDDEN):
            raise PermissionError(f"the grader sandbox does not allow {event}")
        if event in TWO_PATHS:  # both ends in the scratch folder, no directory descriptors
            if not (allowed(args[0], True) and allowed(args[1], True)) or any(a is not None for a in args[2:]):
                raise PermissionError(f"the grader sandbox allows files only in its scratch folder ({event} {args[:2]!r})")
        elif event in PATH_EVENTS and args:
            write = event not in READ_ONLY or (event == "open" and _writes(args))
            if not allowed(args[0], write, opening=event == "open"):
                raise PermissionError(f"the grader sandbox allows files only in its scratch folder ({event} {args[0]!r})")

    sys.addaudithook(hook)
    sys.stdout = sys.stderr = printed
    try:
        scope: dict = {"__name__": "grader"}
        exec(compile(job["source"], "<grader>", "exec"), scope)
        grade = scope.get("grade")
        if not callable(grade):
            answer({"error": "the source defines no function grade(sample, item)", "kind": "runtime"})
            return
        value = grade(job["sample"], job["item"])
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            answer({"error": f"grade() returned {value!r:.200}, not a finite number", "kind": "runtime"})
            return
        answer({"score": float(value)})
    except MemoryError:
        answer({"error": f"the grader used more than its {limits['memory_bytes'] >> 20} MiB of memory",
                "kind": "memory"})
    except BaseException as exc:  # noqa: BLE001 - the user's code: report whatever it raised
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<grader>"]
        where = f" (line {frames[-1].lineno})" if frames else ""
        answer({"error": f"{type(exc).__name__}: {exc}{where}"[:2000], "kind": "runtime"})


def _writes(args: tuple) -> bool:
    mode = args[1] if len(args) > 1 else "r"
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))


if __name__ == "__main__":
    main()
