"""A sweep's runs summarised: over the seeds per method and step size (:class:`Cell`), over the step sizes per method
(:class:`Summary`), and gradient descent's stability limits per panel (:class:`Limits`).

Definitions the report (:mod:`.report`) states with its numbers:

- a cell is one method (with the grid's other optimizer settings), one panel (the grid's settings outside the optimizer)
  and one step size ``Δt``, over the seeds; its numbers are mean ± standard deviation over the seeds whose run finished
  finite (the sample standard deviation; none with one seed);
- a cell *trains* when every seed trained (:mod:`..outcome` defines trained, frozen, unstable and diverged); it is
  *diverged* when any seed diverged, else *unstable* when any was, else *frozen* when any froze;
- *largest Δt that trains*: the largest step of a cell that trains; *best Δt*: among those, the step with the best mean
  final metric; *time to target*: seconds from the start of training (the run's first TensorBoard event) to the first
  validation at which the metric reached the target, the mean over the seeds when every seed reached it; the table gives
  the fastest over the method's steps that train;
- gradient descent's stability limit: the largest SGD step at which every seed trained (the grid's SGD runs: above it
  SGD diverged, blew up (unstable) or froze), and ``2 / (gradient_scale · λ_max)`` of the training loss's Hessian at the
  initial weights (:mod:`.stability`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..methods import label
from ..tables import Stat, counts_text
from .grid import SEED_KEY, Point
from .metrics import higher_is_better
from .records import RunRecord
from .stability import InitialState


def _reached(record: RunRecord, metric: str, target: float | None) -> float | None:
    """Seconds to the first validation at which ``metric`` reached ``target`` (None: never)."""
    if target is None:
        return None
    better = higher_is_better(metric)
    for v, s in zip(record.metric(metric), record.val_seconds):
        if (v >= target) if better else (v <= target):
            return s
    return None


@dataclass
class Cell:
    """One method (series), one panel, one step size, over the seeds."""

    method: str
    series: list[list[str]]  #: the grid's optimizer settings beside the method and Δt
    panel: list[list[str]]
    lr: float
    runs: list[str]  #: the points' folder names
    counts: dict[str, int]  #: outcome → runs
    final: Stat | None  #: the last validation's metric, over the seeds that finished finite
    best: Stat | None  #: the best validation's metric over the epochs
    seconds: Stat | None  #: time to target, when every finite seed reached it
    peak: Stat | None = None  #: the largest epoch's training loss ÷ the training loss at the initial weights
    missing: int = 0  #: points of the plan with no outcome yet
    initial: float | None = None  #: the metric at the initial weights (the first seed's)
    higher_better: bool = False

    @property
    def worse(self) -> bool:
        """Every seed learned, but the final metric (their mean) is worse than the untrained network's: it trained on
        the training set and lost on the held-out one (a blow-up it did not recover from)."""
        if self.final is None or self.initial is None:
            return False
        return self.final.mean < self.initial if self.higher_better else self.final.mean > self.initial

    @property
    def status(self) -> str:
        c = self.counts
        if c.get("diverged"):
            return "diverged"
        if not (c.get("trained") or c.get("frozen") or c.get("unstable")):
            return "error" if c.get("error") else "missing"
        if c.get("unstable"):
            return "unstable"
        if c.get("frozen"):
            return "frozen"
        if self.worse:
            return "worse"
        return "trained" if not c.get("error") and not self.missing else "partial"

    @property
    def outcome(self) -> str:
        n = sum(self.counts.values()) + self.missing
        text = ", ".join(p for p in (counts_text(self.counts, n), f"not run {self.missing}/{n}" if self.missing else "")
                         if p)
        return f"{text}; worse than at the start" if self.status == "worse" else text


def cells(points: list[Point], records: dict[str, RunRecord], metric: str, target: float | None,
          initial: dict[str, float] | None = None) -> list[Cell]:
    """The plan's points grouped over seeds, in the plan's order; ``initial`` is each point's metric at its initial
    weights (by point name)."""
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault((p.series(), p.panel(), p.lr), []).append(p)
    best_of = max if higher_is_better(metric) else min
    out = []
    for (series, panel, lr), pts in groups.items():
        recs = [records[p.name] for p in pts if p.name in records]
        counts: dict[str, int] = {}
        for r in recs:
            counts[r.status] = counts.get(r.status, 0) + 1
        finite = [r for r in recs if r.status in ("trained", "frozen", "unstable") and r.metric(metric)]
        times = [_reached(r, metric, target) for r in finite]
        out.append(Cell(
            method=series[0], series=[list(kv) for kv in series[1]], panel=[list(kv) for kv in panel], lr=lr,
            runs=[p.name for p in pts], counts=counts,
            final=Stat.of([r.metric(metric)[-1] for r in finite]),
            best=Stat.of([best_of(r.metric(metric)) for r in finite]),
            seconds=Stat.of(times) if times and all(t is not None for t in times) else None,  # type: ignore[arg-type]
            peak=Stat.of([max(r.train_loss) / r.init_train_loss for r in recs
                          if r.train_loss and r.init_train_loss > 0 and math.isfinite(max(r.train_loss))]),
            missing=len(pts) - len(recs),
            initial=(initial or {}).get(pts[0].name), higher_better=higher_is_better(metric),
        ))
    return out


@dataclass
class Summary:
    """One method (series) in one panel, over its step sizes."""

    method: str
    series: list[list[str]]
    panel: list[list[str]]
    tried: list[float]
    largest_trained: float | None
    best_lr: float | None
    final: Stat | None  #: at the best Δt
    best: Stat | None  #: at the best Δt
    fastest: Stat | None  #: the shortest mean time to target over the steps that train
    fastest_lr: float | None


def summaries(all_cells: list[Cell], metric: str) -> list[Summary]:
    groups: dict[str, list[Cell]] = {}
    for c in all_cells:
        groups.setdefault(json.dumps([c.method, c.series, c.panel]), []).append(c)
    sign = -1.0 if higher_is_better(metric) else 1.0
    out = []
    for cs in groups.values():
        cs = sorted(cs, key=lambda c: c.lr)
        trains = [c for c in cs if c.status == "trained"]
        ranked = [c for c in trains if c.final is not None]
        best = min(ranked, key=lambda c: sign * c.final.mean, default=None)  # type: ignore[union-attr]
        timed = [c for c in trains if c.seconds is not None]
        fastest = min(timed, key=lambda c: c.seconds.mean, default=None)  # type: ignore[union-attr]
        out.append(Summary(cs[0].method, cs[0].series, cs[0].panel, [c.lr for c in cs],
                           max((c.lr for c in trains), default=None), best.lr if best else None,
                           best.final if best else None, best.best if best else None,
                           fastest.seconds if fastest else None, fastest.lr if fastest else None))
    return out


@dataclass
class Limits:
    """Gradient descent's stability limit in one panel: observed in the grid's SGD runs, and from the Hessian."""

    panel: list[list[str]]
    observed: float | None = None  #: the largest SGD step at which every seed trained
    first_failed: float | None = None  #: the smallest SGD step above it at which a seed did not train
    failure: str = ""  #: what happened there: diverged, unstable, frozen or worse
    hessian: Stat | None = None  #: 2/(gradient_scale·λ_max) over the seeds
    lambda_max: Stat | None = None
    states: list[dict[str, Any]] = field(default_factory=list)


def limits(all_cells: list[Cell], points: list[Point], states: dict[str, InitialState]) -> list[Limits]:
    panels: dict[str, Limits] = {}
    for p in points:
        panels.setdefault(json.dumps(p.panel()), Limits([list(kv) for kv in p.panel()]))
    for key, lim in panels.items():
        sgd = [c for c in all_cells if c.method == "sgd" and not c.series and json.dumps(c.panel) == key
               and c.status not in ("missing", "error")]
        lim.observed = max((c.lr for c in sgd if c.status == "trained"), default=None)
        above = [c for c in sgd if c.status in ("diverged", "unstable", "frozen", "worse")
                 and (lim.observed is None or c.lr > lim.observed)]
        first = min(above, key=lambda c: c.lr, default=None)
        lim.first_failed, lim.failure = (first.lr, first.status) if first else (None, "")
        group_keys = {json.dumps(p.group()) for p in points if json.dumps(p.panel()) == key}
        found = [states[g] for g in sorted(group_keys) if g in states]
        lim.states = [asdict(s) for s in found]
        lim.hessian = Stat.of([s.sgd_limit for s in found if math.isfinite(s.sgd_limit)])
        lim.lambda_max = Stat.of([s.lambda_max for s in found])
    return list(panels.values())


def settings_text(kvs: list[list[str]]) -> str:
    return ", ".join(f"{k.rpartition('.')[2] if k != SEED_KEY else 'seed'}={v}" for k, v in kvs)


def series_label(method: str, series: list[list[str]]) -> str:
    return label(method) + (f" ({settings_text(series)})" if series else "")
