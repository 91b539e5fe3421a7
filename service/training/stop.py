"""SIGTERM in the training child: the runner's request to stop (a pause, a cancel, a runner
shutting down). The handler is installed on the child's first line and only sets a flag, so a
request that comes while torch imports, the model loads or the data downloads is kept, and the
child stops cleanly at the next point that checks it (`check`, or StopOnSignal between steps)
instead of dying with -15, which the runner would read as a crash."""

from __future__ import annotations

import signal

_requested = False


class StopRequested(Exception):
    """Raised where stopping is safe: before training starts (`trained` False), or between steps
    once the step's save is uploaded; never inside an upload."""

    def __init__(self, message: str, *, trained: bool) -> None:
        super().__init__(message)
        self.trained = trained


def install() -> None:
    signal.signal(signal.SIGTERM, _on_signal)


def _on_signal(*_: object) -> None:
    global _requested
    _requested = True


def requested() -> bool:
    return _requested


def check(where: str) -> None:
    """Stop here if the runner asked: nothing of this attempt's training is lost."""
    from service.training import ranks

    if ranks.agree(_requested):  # every rank checks at the same points, and stops together
        raise StopRequested(f"stopped by SIGTERM {where}", trained=False)
