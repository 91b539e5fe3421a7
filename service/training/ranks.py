"""One job on several devices: data-parallel ranks (issue 34).

    python -m service.training --ranks N SPEC.json

starts N rank processes, each `python -m service.training SPEC.json` with torchrun's environment
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so the Trainer
(through accelerate) trains them as one DDP job: NCCL on GPUs, gloo on the CPU. Each rank takes
its share of every optimizer step's micro-batches; batch_size stays the examples per step.

Why this launcher and not torchrun's agent itself: the agent starts each rank in a new session
with its file descriptors closed and turns a SIGTERM into killing the ranks after 30 s. The
runner's contract with a training child is one process group that a SIGTERM asks to save and
stop (a pause uploads a resume point, however long that takes), an events pipe, and an exit code
that says what happened (OOM, stopped, bad input). So the launcher keeps the ranks in its own
process group (one killpg reaches them all), hands the events pipe to rank 0 only, and exits with
the code that explains the attempt. Across nodes, torchrun's elastic agent runs the same rank
command (deploy/README.md).

Stopping together: a SIGTERM reaches every rank at once, but each notices it at its own next
check; a rank that stopped alone would leave the others waiting in a collective. So every stop
decision is agreed (`agree`: any rank's flag stops all) at the same points on every rank. A rank
that dies (SIGKILL, a crash) takes the attempt with it: the launcher kills the others at once,
and the job resumes from its latest checkpoint like any failed attempt, on as many devices as
it then gets (the checkpoint is the same whatever the world size).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from service.contracts import messages as m

# After rank 0 ended (it writes every message and upload), how long the others may take to exit.
STRAGGLER_SECONDS = 60


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """The rank that writes messages, uploads and the final adapter: rank 0 (or the only one)."""
    return rank() == 0


def init(device: str) -> None:
    """Join the job's process group (before anything else agrees on anything): NCCL on GPUs,
    gloo on the CPU."""
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")


def agree(flag: bool) -> bool:
    """True on every rank if it is True on any (one rank's stop request stops all, at the same
    point). Every rank must call it at the same points."""
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32,
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def share(value):  # noqa: ANN001, ANN201
    """Rank 0's `value` on every rank (any picklable object)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exit_code(codes: list[int]) -> int:
    """The attempt's exit code from its ranks' codes in the order they ended (-N: killed by
    signal N): 0 when all succeeded, EXIT_STOPPED when all stopped or succeeded, else the first
    failure's (the cause; the ranks killed after it are its consequence). -SIGTERM: a rank got
    the runner's stop before it could catch it (its interpreter starting), which the runner
    reads as a stop, as from a lone child; any other signal is a crash, retried."""
    failed = [code for code in codes if code not in (m.EXIT_OK, m.EXIT_STOPPED)]
    if failed:
        return failed[0] if failed[0] > 0 or failed[0] == -signal.SIGTERM else m.EXIT_FAILED
    return m.EXIT_OK if all(code == m.EXIT_OK for code in codes) else m.EXIT_STOPPED


def launch(n: int, spec_path: str) -> int:
    """Run N ranks of one job and return the attempt's exit code (see exit_code)."""
    # The runner's SIGTERM (pause, cancel, shutdown) goes to the whole process group: the ranks
    # act on it; the launcher waits for them.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    events_fd = os.environ.get("TUNEDOCK_EVENTS_FD")
    base = {k: v for k, v in os.environ.items() if k != "TUNEDOCK_EVENTS_FD"}
    base |= {"WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(_free_port()), "GROUP_RANK": "0", "ROLE_RANK": "0"}
    procs: dict[int, subprocess.Popen] = {}
    for r in range(n):
        env = base | {"RANK": str(r), "LOCAL_RANK": str(r), "ROLE_WORLD_SIZE": str(n)}
        pass_fds: tuple[int, ...] = ()
        if r == 0 and events_fd is not None:
            env["TUNEDOCK_EVENTS_FD"] = events_fd  # rank 0 writes the job's messages
            pass_fds = (int(events_fd),)
        # SIG_IGN would be inherited through exec: a stop that came before the rank installs its
        # handler would be lost, and the rank train on.
        procs[r] = subprocess.Popen([sys.executable, "-m", "service.training", spec_path],
                                    env=env, pass_fds=pass_fds,
                                    preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    if events_fd is not None:
        os.close(int(events_fd))  # rank 0's copy is the one: the pipe ends when rank 0 ends
    codes: dict[int, int] = {}  # in the order the ranks ended
    main_ended: float | None = None
    while len(codes) < n:
        for r, proc in procs.items():
            if r not in codes and (code := proc.poll()) is not None:
                codes[r] = code
                print(f"rank {r} exited with {code}", file=sys.stderr, flush=True)
        failed = any(code not in (m.EXIT_OK, m.EXIT_STOPPED) for code in codes.values())
        if 0 in codes and main_ended is None:
            main_ended = time.monotonic()
        late = main_ended is not None and time.monotonic() - main_ended > STRAGGLER_SECONDS
        if failed or late:
            # The others would wait forever in their next collective.
            for r, proc in procs.items():
                if r not in codes:
                    proc.kill()
                    codes[r] = proc.wait()
                    print(f"rank {r} killed ({'a rank failed' if failed else 'outlived rank 0'})",
                          file=sys.stderr, flush=True)
        time.sleep(0.05)
    code = exit_code(list(codes.values()))
    if code == -signal.SIGTERM:  # end as a lone child would have: by the runner's SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    return code
