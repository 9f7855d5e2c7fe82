"""Running a sweep's points on this machine: each as its own ``python -m gf_lightning fit`` process, ``jobs`` at once
(:class:`ProcessRunner`), each recorded as it ends (:func:`.records.collect`).

The runs are in the sweep's process group and end with it, even when it is SIGKILLed (:mod:`gf_lightning.lifeline`);
interrupted, the sweep stops them (:meth:`ProcessRunner.stop`).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from ...lifeline import PARENT_ENV
from .grid import Point
from .records import RunRecord, collect, point_folder

#: seconds the runs under way get to stop after SIGTERM when the sweep is interrupted, before SIGKILL
STOP_GRACE_S = 30.0


def package_root() -> Path:
    """The folder that holds the ``gf_lightning`` package these runs import (a checkout, or site-packages)."""
    import gf_lightning

    return Path(gf_lightning.__file__).resolve().parent.parent


def child_env(threads: int) -> dict[str, str]:
    """The environment of a run: ``threads`` threads for torch's CPU kernels, and this checkout's package first on the
    path (so the runs use the code that planned them, installed or not)."""
    root = str(package_root())
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    n = str(threads)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


def prepare(point: Point) -> Path:
    """Empty the point's folder of an earlier attempt (its logs would mix with the new run's)."""
    folder = point_folder(point)
    for name in ("lightning_logs", "log.txt", "started", "exit_code", "result.json"):
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ProcessRunner:
    """Runs points as ``python -m gf_lightning fit`` processes, ``jobs`` at once, ``threads`` CPU threads each."""

    def __init__(self, jobs: int = 1, threads: int = 1, python: str = sys.executable, echo=None) -> None:
        self.jobs, self.threads, self.python = jobs, threads, python
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopping = False  #: set by :meth:`stop`: no run starts after it

    def run_one(self, point: Point) -> None:
        folder = prepare(point)
        (folder / "started").write_text(f"{time.time():.3f}\n")
        env = {**child_env(self.threads), PARENT_ENV: str(os.getpid())}  # the run ends if this process dies
        with open(folder / "log.txt", "w") as log, self._lock:  # in this process's group: a kill of the group ends it
            if self._stopping:
                return
            proc = subprocess.Popen([self.python, "-m", "gf_lightning", "fit", *point.args], stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
            self._procs.add(proc)
        code = proc.wait()
        with self._lock:
            self._procs.discard(proc)
        (folder / "exit_code").write_text(f"{code}\n")

    def run(self, points: list[Point], init_loss: dict[str, float]) -> list[RunRecord]:
        """Run ``points`` (none of them done), record each as it ends; on Ctrl-C, stop the runs under way."""
        records: list[RunRecord] = []
        if not points:
            return records
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        try:
            futures = {pool.submit(self.run_one, p): p for p in points}
            for i, future in enumerate(as_completed(futures), 1):
                point = futures[future]
                future.result()
                record = collect(point, init_loss.get(point.name, math.nan))
                record.save(point_folder(point))
                records.append(record)
                self.echo(f"[{i}/{len(points)}] {point.name}: {record.status} ({record.wall_s:.1f} s)"
                          + (f": {record.message}" if record.status == "error" else ""))
        except BaseException:  # Ctrl-C, SIGTERM: no new runs; the runs under way end (their exit says so: redone later)
            pool.shutdown(wait=False, cancel_futures=True)
            self.stop()
            raise
        pool.shutdown()
        return records

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """End the runs under way: SIGTERM (a run stops after its step and says so in its log; it passes the signal on
        to processes it started), then SIGKILL for what is left after ``grace_s`` seconds or at a second interrupt."""
        with self._lock:
            self._stopping = True
            procs = list(self._procs)
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + grace_s
        try:
            for proc in procs:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
