"""Process lifetime: children that must not outlive the process that started them."""

from __future__ import annotations

import signal
import sys


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux; else no-op).
    Works even when the parent is killed with SIGKILL."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
