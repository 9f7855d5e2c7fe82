"""One sweep at a time in a folder: ``<out>/sweep.lock``, held with ``fcntl.flock`` while a sweep writes there. A
second sweep into the same folder is refused in one line, instead of both running every point and mixing their runs.
The kernel lets go of the lock when its holder ends, however it ends (SIGKILL too): a dead sweep's lock is never in the
way."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .grid import SweepError

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

#: the lock file's name in the sweep's folder
LOCK_NAME = "sweep.lock"


class FolderLock:
    """``with FolderLock(out):`` holds ``out``'s lock (creating ``out``), or raises :class:`SweepError` naming the
    holder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.file = None

    def __enter__(self) -> FolderLock:
        if fcntl is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        self.file = open(self.folder / LOCK_NAME, "a+")  # not inherited by the runs (close-on-exec)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise SweepError(f"--out: {str(self.folder)!r} is in use by another sweep ({holder}); allowed: one sweep "
                             "at a time in a folder: wait for it to end, stop it, or give another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None
