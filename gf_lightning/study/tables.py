"""The numbers of the studies' tables: a statistic over seeds (:class:`Stat`), how a number and a mean ± s.d. are
written, a cell's count of outcomes, and markdown tables."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

#: what a table shows where there is no number
NONE = "—"


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over ``n`` seeds (``sd`` NaN for one), and the smallest and largest value."""

    mean: float
    sd: float
    n: int
    lo: float
    hi: float

    @classmethod
    def of(cls, xs: list[float]) -> Stat | None:
        xs = [x for x in xs if x == x]
        if not xs:
            return None
        return cls(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan, len(xs), min(xs), max(xs))


def number(x: float | None, pct: bool = False) -> str:
    """``0.123`` (3 significant digits), or ``12.30 %`` (``pct``: a fraction as a percentage); — for None or NaN."""
    if x is None or x != x:
        return NONE
    return f"{100 * x:.2f} %" if pct else f"{x:.3g}"


def formatted(x: float | int | None, spec: str = ".3e") -> str:
    """``format(x, spec)``; — for None or NaN."""
    return NONE if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def mean_sd(s: Stat | None, pct: bool = False, unit: str = "", runs: int = 1, count: bool = True) -> str:
    """``mean ± sd (n=k)`` (``count``: with the number of values); a single value alone, with ``(n=1)`` when ``runs``
    (the seeds asked) were more and ``count``. The spread of a percentage is in points, that of a number to 2 digits."""
    if s is None:
        return NONE
    text = number(s.mean, pct) + unit
    if s.n > 1:
        spread = number(s.sd, pct) if pct else f"{s.sd:.2g}"
        text += f" ± {spread}{unit}" + (f" (n={s.n})" if count else "")
    elif runs > 1 and count:
        text += " (n=1)"
    return text


def counts_text(counts: dict[str, int], n: int) -> str:
    """``trained 2/3, diverged 1/3`` (``trained`` alone when ``n`` is 1): the outcomes of a cell's ``n`` runs."""
    return ", ".join(f"{k} {v}/{n}" if n > 1 else k for k, v in counts.items() if v)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table: the header, the rule, a line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
