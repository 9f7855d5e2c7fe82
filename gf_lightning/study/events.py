"""Reading a run's TensorBoard scalars back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Scalar:
    """One logged scalar: the optimizer step it was written at, its value, and the wall-clock time it was written."""

    step: int
    value: float
    wall: float


def read_scalars(root: str | Path) -> dict[str, list[Scalar]]:
    """Every scalar in the event files under ``root`` (searched recursively), as ``tag → [Scalar, …]`` in step order
    (ties in the order they were written)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[Scalar]] = {}
    for path in sorted(Path(root).rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(Scalar(e.step, float(e.value), e.wall_time) for e in acc.Scalars(tag))
    return {tag: sorted(points, key=lambda p: (p.step, p.wall)) for tag, points in out.items()}


def values(scalars: dict[str, list[Scalar]], tag: str) -> list[float]:
    """The values of ``tag`` in step order (empty when the run never logged it)."""
    return [p.value for p in scalars.get(tag, [])]
