"""The progress lines on stderr while a study runs: each run's start, then its epochs with the run's and the whole
study's estimated time left."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

from .records import RunSpec


@dataclass(frozen=True)
class Tick:
    """How far one run is, as the process that trains it reports it: ``done`` of ``total`` epochs (0: it has just
    started), at ``rate`` seconds an epoch so far."""

    index: int  #: the run's place in the plan
    done: int
    total: int
    rate: float = 0.0


class Eta:
    """Time left overall: each started run's remaining epochs at its own rate, the runs to come at the rate seen so far
    for the same experiment (else the latest rate seen), shared among the ``jobs`` processes that train. Rough: IEQ
    (full) is slower than the rest."""

    def __init__(self, plan: list[RunSpec], jobs: int = 1) -> None:
        self.plan, self.jobs = plan, max(1, jobs)
        self.rates: dict[int, float] = {}  # run index → s/epoch
        self.done: dict[int, int] = {}  # run index → epochs done (started runs only)
        self.finished: set[int] = set()

    def update(self, tick: Tick) -> None:
        if tick.done:
            self.rates[tick.index] = tick.rate
        self.done[tick.index] = tick.done

    def finish(self, index: int) -> None:
        """The run is over (all its epochs, or stopped early: NaN, an error)."""
        self.finished.add(index)

    def _rate(self, experiment: int) -> float:
        same = [r for i, r in self.rates.items() if self.plan[i].experiment == experiment]
        return statistics.mean(same) if same else (list(self.rates.values()) or [0.0])[-1]

    def remaining(self) -> float:
        left = 0.0
        for index, spec in enumerate(self.plan):
            if index in self.finished:
                continue
            if index in self.rates:
                left += self.rates[index] * (spec.epochs - self.done[index])
            else:
                left += spec.epochs * self._rate(spec.experiment)
        return left / self.jobs


class ProgressLines:
    """Print a line when a run starts, then one per epoch at most every ``every`` seconds per run (and after its last
    epoch): run, epoch, s/epoch, the run's and the whole plan's ETA. Call it with each :class:`Tick`, in any order of
    runs."""

    def __init__(self, plan: list[RunSpec], jobs: int = 1, every: float = 10.0, stream=None) -> None:
        self.plan, self.every, self.stream = plan, every, stream
        self.eta = Eta(plan, jobs)
        self.last_print: dict[int, float] = {}

    def __call__(self, tick: Tick) -> None:
        self.eta.update(tick)
        spec, now = self.plan[tick.index], time.monotonic()
        head = f"[exp{spec.experiment} {tick.index + 1}/{len(self.plan)} {spec.method:>12}]"
        if tick.done == 0:
            self.last_print[tick.index] = now
            self._print(f"{head} start: {spec.config.name}, {spec.epochs} epochs")
        elif now - self.last_print.get(tick.index, 0.0) >= self.every or tick.done == tick.total:
            self.last_print[tick.index] = now
            self._print(f"{head} epoch {tick.done:>4}/{tick.total}  {tick.rate:6.2f} s/epoch  run ETA "
                        f"{clock(tick.rate * (tick.total - tick.done))}  all ETA {clock(self.eta.remaining())}")

    def finish(self, index: int) -> None:
        self.eta.finish(index)

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stderr, flush=True)


def clock(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
