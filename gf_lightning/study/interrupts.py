"""A study stopped by a signal ends with one line, not a traceback: inside :func:`interruptible`, SIGTERM and SIGHUP
raise :class:`Interrupted` in the main thread as Ctrl-C raises ``KeyboardInterrupt``, so that the runs under way are
stopped on the way out (:meth:`.sweep.runner.ProcessRunner.stop`); the command then prints :func:`interrupted_line` and
exits ``128 + signal``."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import GFConfigError

#: the signals that stop a study as Ctrl-C does
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A signal stopped the study (a ``BaseException``, as ``KeyboardInterrupt``: no ``except Exception`` keeps it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @classmethod
    def of(cls, err: BaseException) -> Interrupted:
        return err if isinstance(err, Interrupted) else cls(signal.SIGINT)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def interruptible() -> Iterator[None]:
    """:data:`STOP_SIGNALS` raise :class:`Interrupted` within the block (in the main thread; elsewhere nothing
    changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def interrupted_line(prog: str, err: BaseException) -> str:
    name = "Ctrl-C (SIGINT)" if Interrupted.of(err).signum == signal.SIGINT else str(Interrupted.of(err))
    return (f"{prog}: interrupted by {name}: the runs under way were stopped; the same command again runs what is not "
            "done")


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """A study command's exit code: ``body()`` run :func:`interruptible`; a refusal (``GFConfigError``) or a file
    system error (``OSError``) ends in one line and exit 2, a signal in :func:`interrupted_line` and ``128 + signal``,
    a finished body in its code (0 for ``None``)."""
    try:
        with interruptible():  # SIGTERM, SIGHUP and Ctrl-C stop the runs under way, and end in one line
            return body() or 0
    except GFConfigError as err:  # a bad setting, or another sweep writing into the same folder
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder that cannot be made or written (--out under a file, no permission, disk full)
        print(f"{prog}: error: {err.strerror or err}: {err.filename!r}; allowed: a folder this user can write",
              file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as err:
        print(interrupted_line(prog, err), file=sys.stderr)
        return Interrupted.of(err).exit_code
