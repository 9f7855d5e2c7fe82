"""The Burgers PINN race: relative L² error against wall-clock seconds for Adam, L-BFGS, Adam → L-BFGS and IEQ (fixed
and adaptive Δt), in float32 and float64, on the net and points of ``configs/paper/burgers.yaml``.

Each run trains its own copy of the config's network (seeded) in a plain loop, full batch, for ``budget`` seconds of
training (the clock stops while the held-out error is measured), and records ``(seconds, relative L² error)`` after
every step once ``every`` seconds have passed since the last record, and at the end. :func:`run_race` writes them to
``race.json``; :func:`report` draws ``race.png`` (time on x, log error) and ``race.md`` (per method and dtype, the
median over seeds of the time each first reaches 1e-2, 1e-3, 1e-4, and of the best error within the budget).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from ...components import MLP, BurgersPINN
from ...data import BurgersCollocation
from ...errors import GFConfigError
from ...optim.ieq import IEQ
from ..io import json_text, write_atomic
from ..plotting import pyplot

METHODS = ("adam", "lbfgs", "adam+lbfgs", "ieq", "ieq-adaptive")
DTYPES = ("float32", "float64")
THRESHOLDS = (1e-2, 1e-3, 1e-4)


@dataclass(frozen=True)
class RaceSettings:
    """What one race runs: every method × dtype × seed for ``budget`` seconds each."""

    config: str = "configs/paper/burgers.yaml"
    methods: tuple[str, ...] = METHODS
    dtypes: tuple[str, ...] = DTYPES
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: float = 1800.0  #: seconds of training per run
    every: float = 5.0  #: seconds between records
    adam_lr: float = 1e-3
    adam_share: float = 0.2  #: Adam → L-BFGS: the share of the budget spent in Adam
    ieq_lr: float = 0.01  #: IEQ's Δt (the adaptive run's starting Δt): docs/paper.md's Burgers setting
    row_fraction: float = 1.0  #: IEQ: the share of the rows solved each step
    threads: int = 1


@dataclass
class RaceRun:
    """One run's record: ``points`` are ``(seconds, relative L² error)``."""

    method: str
    dtype: str
    seed: int
    points: list[tuple[float, float]] = field(default_factory=list)
    steps: int = 0


@dataclass(frozen=True)
class Problem:
    """The config's network settings and its points, in float64."""

    net_args: dict
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    u_test: torch.Tensor


def check(settings: RaceSettings) -> None:
    """Refuse a bad setting in one line, before any work."""
    for name, given, allowed in (("methods", settings.methods, METHODS), ("dtypes", settings.dtypes, DTYPES)):
        bad = [g for g in given if g not in allowed]
        if bad or not given:
            raise GFConfigError(f"race {name}: got {list(given)}; allowed: one or more of {', '.join(allowed)}")
    for name in ("budget", "every", "adam_lr", "ieq_lr"):
        value = getattr(settings, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise GFConfigError(f"race {name} must be a number > 0; got {value!r}")
    if not 0 < settings.adam_share < 1 or not 0 < settings.row_fraction <= 1:
        raise GFConfigError(f"race adam_share must be in (0, 1) and row_fraction in (0, 1]; got "
                            f"{settings.adam_share!r}, {settings.row_fraction!r}")
    if not Path(settings.config).is_file():
        raise GFConfigError(f"race config: no file {settings.config!r}; allowed: a config like "
                            "configs/paper/burgers.yaml")


def load_problem(config: str) -> Problem:
    """The config's MLP settings and collocation points (its ``model.net`` and ``data`` init_args)."""
    cfg = yaml.safe_load(Path(config).read_text())
    data = BurgersCollocation(**cfg["data"].get("init_args", {}))
    x, y = data.collocation()
    x_test, y_test = data.solution_grid()
    return Problem(dict(cfg["model"]["net"].get("init_args", {})), x, y, x_test, y_test[:, 0])


def _relative_error(net: MLP, problem: Problem, dtype: torch.dtype) -> float:
    with torch.no_grad():
        u = net(problem.x_test.to(dtype)).double()[:, 0]
    return float((u - problem.u_test).norm() / problem.u_test.norm())


def _stepper(method: str, net: MLP, x: torch.Tensor, y: torch.Tensor, settings: RaceSettings,
             elapsed: Callable[[], float]) -> Callable[[], None]:
    """One training step of ``method`` (for Adam → L-BFGS, the phase by the elapsed time)."""
    obj = BurgersPINN()

    def loss_closure(opt: torch.optim.Optimizer) -> Callable[[], torch.Tensor]:
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = obj.loss(obj.predict(net, x), y)
            loss.backward()
            return loss

        return closure

    if method.startswith("ieq"):
        scale = obj.residual_scale(y)
        opt = IEQ(net.parameters(), lr=settings.ieq_lr, max_dense=8192, adaptive_lr=method == "ieq-adaptive",
                  row_fraction=settings.row_fraction)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            return obj.residual(obj.predict(net, x), y, scale)

        return lambda: opt.step(closure, jacobian_fn=lambda: obj.jacobian(net, x, y, scale))
    adam = torch.optim.Adam(net.parameters(), lr=settings.adam_lr)
    lbfgs = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=20, history_size=50, line_search_fn="strong_wolfe")
    if method == "adam":
        return lambda: adam.step(loss_closure(adam))
    if method == "lbfgs":
        return lambda: lbfgs.step(loss_closure(lbfgs))
    switch = settings.adam_share * settings.budget
    return lambda: (adam if elapsed() < switch else lbfgs).step(loss_closure(adam if elapsed() < switch else lbfgs))


def race_one(method: str, dtype_name: str, seed: int, problem: Problem, settings: RaceSettings) -> RaceRun:
    """One run: train for ``settings.budget`` seconds, recording the error every ``settings.every`` seconds."""
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(seed)
    net = MLP(**problem.net_args).to(dtype)
    x, y = problem.x.to(dtype), problem.y.to(dtype)
    run = RaceRun(method, dtype_name, seed)
    clock = [0.0]
    step = _stepper(method, net, x, y, settings, lambda: clock[0])
    run.points.append((0.0, _relative_error(net, problem, dtype)))
    last = 0.0
    while clock[0] < settings.budget:
        t0 = time.perf_counter()
        step()
        clock[0] += time.perf_counter() - t0
        run.steps += 1
        if clock[0] - last >= settings.every or clock[0] >= settings.budget:
            error = _relative_error(net, problem, dtype)
            run.points.append((clock[0], error))
            last = clock[0]
            if not math.isfinite(error):
                break
    return run


def run_race(settings: RaceSettings, out: Path, log: Callable[[str], None] = print) -> list[RaceRun]:
    """Every method × dtype × seed, one after another, written to ``out/race.json`` after each run."""
    check(settings)
    torch.set_num_threads(settings.threads)
    problem = load_problem(settings.config)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[RaceRun] = []
    for seed in settings.seeds:
        for dtype in settings.dtypes:
            for method in settings.methods:
                run = race_one(method, dtype, seed, problem, settings)
                runs.append(run)
                log(f"{method:<12} {dtype} seed {seed}: {run.steps} steps, error {run.points[-1][1]:.3g} after "
                    f"{run.points[-1][0]:.1f} s (best {min(e for _, e in run.points):.3g})")
                record = {"settings": asdict(settings), "runs": [asdict(r) for r in runs]}
                write_atomic(out / "race.json", json_text(record))
    return runs


# -- the report --------------------------------------------------------------------------------------------------------
def first_reach(points: list[tuple[float, float]], threshold: float) -> float:
    """The first recorded time at which the error is ≤ ``threshold`` (``inf`` if never)."""
    return next((t for t, e in points if e <= threshold), math.inf)


def table(runs: list[RaceRun]) -> str:
    """Markdown: per method and dtype, the medians over seeds of the time to 1e-2, 1e-3, 1e-4 and of the best error."""
    groups: dict[tuple[str, str], list[RaceRun]] = {}
    for run in runs:
        groups.setdefault((run.method, run.dtype), []).append(run)
    fmt = lambda s: "—" if not math.isfinite(s) else f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"  # noqa: E731
    heads = " | ".join(f"time to {t:g}" for t in THRESHOLDS)
    lines = [f"| method | dtype | seeds | {heads} | best error | steps |",
             "|---|---|---|" + "---|" * (len(THRESHOLDS) + 2)]
    for (method, dtype), group in groups.items():
        reach = [statistics.median(first_reach(r.points, t) for r in group) for t in THRESHOLDS]
        best = statistics.median(min(e for _, e in r.points) for r in group)
        steps = statistics.median(r.steps for r in group)
        lines.append(f"| {method} | {dtype} | {len(group)} | " + " | ".join(fmt(s) for s in reach)
                     + f" | {best:.3g} | {steps:.0f} |")
    return "\n".join(lines) + "\n"


def report(out: Path) -> None:
    """``race.png`` and ``race.md`` from ``out/race.json``."""
    plt = pyplot()
    data = json.loads((out / "race.json").read_text())
    runs = [RaceRun(r["method"], r["dtype"], r["seed"], [tuple(p) for p in r["points"]], r["steps"])
            for r in data["runs"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = dict(zip(METHODS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    seen = set()
    for run in runs:
        label = f"{run.method} ({run.dtype})"
        ts, es = zip(*run.points)
        ax.plot([max(t, 1e-2) for t in ts], es, color=colours[run.method], ls="-" if run.dtype == "float64" else "--",
                lw=1.2, label=None if label in seen else label)
        seen.add(label)
    ax.set(xscale="log", yscale="log", xlabel="wall-clock seconds (training)", ylabel="relative L² error",
           title="Burgers PINN (configs/paper/burgers.yaml)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "race.png", dpi=120)
    plt.close(fig)
    s = data["settings"]
    (out / "race.md").write_text(f"Budget {s['budget']:g} s a run, seeds {s['seeds']}, {s['threads']} thread(s).\n\n"
                                 + table(runs))
