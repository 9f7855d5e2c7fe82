"""A run started by a sweep ends with it: when :data:`PARENT_ENV` names the process that started this one, this process
gets SIGTERM as soon as that parent dies, even by SIGKILL (Linux: ``prctl(PR_SET_PDEATHSIG)``, which fires when the
thread that started this process ends: a sweep starts its runs from threads that live as long as it; elsewhere a thread
that watches the parent's id). SIGTERM stops a run as :mod:`.interruption` says, or, before training starts, at once."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

#: the environment variable that names the parent process (its pid) whose death ends this one
PARENT_ENV = "GF_LIGHTNING_PARENT_PID"
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """If :data:`PARENT_ENV` is set: SIGTERM this process when that parent dies (now, if it already has). The variable
    is removed, so that processes this one starts (DDP ranks) follow their own parent."""
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent.isdigit():
        return
    parent_pid = int(parent)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            _watch(parent_pid)
    else:
        _watch(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before the request above
        os.kill(os.getpid(), signal.SIGTERM)


def _watch(parent_pid: int, every_s: float = 1.0) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
