"""The Burgers PINN race: relative L² error against wall-clock seconds for Adam, L-BFGS, Adam → L-BFGS and IEQ (fixed
and adaptive Δt), in float32 and float64, on the net and points of ``configs/paper/burgers.yaml``.

Each run trains its own copy of the config's network (seeded) in a plain loop, full batch, for ``budget`` seconds of
training (the clock stops while the held-out error is measured), and records ``(seconds, relative L² error)`` after
every step once ``every`` seconds have passed since the last record, and at the end. The clock is the wall clock, or
(``clock="cpu"``) the process's CPU seconds: with one thread a run's CPU seconds are its wall-clock seconds on a quiet
core, and they stay so when other work shares the machine. :func:`run_race` writes the runs to ``race.json`` as they
finish (``jobs`` at a time, each in its own process) and, run again on the same settings, runs only the missing ones;
:func:`report` draws ``race.png`` (time on x, log error) and ``race.md`` (per method and dtype, the median over seeds of
the time each first reaches 0.1, 1e-2, 1e-3, 1e-4, and of the best error within the budget).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import signal
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
THRESHOLDS = (1e-1, 1e-2, 1e-3, 1e-4)


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
    ieq_lr: float = 1e-4  #: IEQ's fixed Δt (docs/pinn.md: 1e-3 and above overshoot from the initial network)
    ieq_adaptive_lr: float = 0.01  #: the adaptive IEQ's starting Δt: docs/paper.md's Burgers setting
    row_fraction: float = 1.0  #: IEQ: the share of the rows solved each step
    threads: int = 1  #: torch threads per run
    clock: str = "wall"  #: "wall" (seconds) or "cpu" (the run's process CPU seconds)
    jobs: int = 1  #: runs at once, each in its own process


#: Settings that do not change what a run measures (a race may be resumed with other values).
RUN_INDEPENDENT = ("methods", "dtypes", "seeds", "jobs")


@dataclass
class RaceRun:
    """One run's record: ``points`` are ``(seconds, relative L² error)``."""

    method: str
    dtype: str
    seed: int
    points: list[tuple[float, float]] = field(default_factory=list)
    steps: int = 0
    rejected: int = 0  #: the adaptive IEQ's rejected tries
    final_lr: float | None = None  #: IEQ's Δt at the end (the adaptive run's λ·Δt)


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
    for name in ("budget", "every", "adam_lr", "ieq_lr", "ieq_adaptive_lr"):
        value = getattr(settings, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise GFConfigError(f"race {name} must be a number > 0; got {value!r}")
    if not 0 < settings.adam_share < 1 or not 0 < settings.row_fraction <= 1:
        raise GFConfigError(f"race adam_share must be in (0, 1) and row_fraction in (0, 1]; got "
                            f"{settings.adam_share!r}, {settings.row_fraction!r}")
    for name in ("threads", "jobs"):
        value = getattr(settings, name)
        if not (isinstance(value, int) and value >= 1):
            raise GFConfigError(f"race {name} must be a whole number >= 1; got {value!r}")
    if settings.clock not in ("wall", "cpu"):
        raise GFConfigError(f"race clock: got {settings.clock!r}; allowed: wall, cpu")
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
             elapsed: Callable[[], float]) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    """One training step of ``method`` (for Adam → L-BFGS, the phase by the elapsed time), and its optimizer (the last
    one, for Adam → L-BFGS)."""
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
        adaptive = method == "ieq-adaptive"
        opt = IEQ(net.parameters(), lr=settings.ieq_adaptive_lr if adaptive else settings.ieq_lr, max_dense=8192,
                  adaptive_lr=adaptive, row_fraction=settings.row_fraction)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            return obj.residual(obj.predict(net, x), y, scale)

        return (lambda: opt.step(closure, jacobian_fn=lambda: obj.jacobian(net, x, y, scale))), opt
    adam = torch.optim.Adam(net.parameters(), lr=settings.adam_lr)
    lbfgs = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=20, history_size=50, line_search_fn="strong_wolfe")
    if method == "adam":
        return (lambda: adam.step(loss_closure(adam))), adam
    if method == "lbfgs":
        return (lambda: lbfgs.step(loss_closure(lbfgs))), lbfgs
    switch = settings.adam_share * settings.budget

    def phase() -> None:
        opt = adam if elapsed() < switch else lbfgs
        opt.step(loss_closure(opt))

    return phase, lbfgs


def _ieq_record(run: RaceRun, opt: torch.optim.Optimizer) -> None:
    """IEQ's Δt at the end and its rejected tries, read from its state."""
    if isinstance(opt, IEQ):
        state = opt.global_state
        run.final_lr = opt.param_groups[0]["lr"] * float(state.get("dt_scale", 1.0))
        run.rejected = int(state.get("rejected_steps", 0))


def race_one(method: str, dtype_name: str, seed: int, problem: Problem, settings: RaceSettings) -> RaceRun:
    """One run: train for ``settings.budget`` seconds, recording the error every ``settings.every`` seconds."""
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(seed)
    net = MLP(**problem.net_args).to(dtype)
    x, y = problem.x.to(dtype), problem.y.to(dtype)
    run = RaceRun(method, dtype_name, seed)
    clock = [0.0]
    step, opt = _stepper(method, net, x, y, settings, lambda: clock[0])
    run.points.append((0.0, _relative_error(net, problem, dtype)))
    last = 0.0
    now = time.process_time if settings.clock == "cpu" else time.perf_counter
    while clock[0] < settings.budget:
        t0 = now()
        step()
        clock[0] += now() - t0
        run.steps += 1
        if clock[0] - last >= settings.every or clock[0] >= settings.budget:
            error = _relative_error(net, problem, dtype)
            run.points.append((clock[0], error))
            last = clock[0]
            if not math.isfinite(error):
                break
    _ieq_record(run, opt)
    return run


def _worker_start() -> None:
    """A worker leaves Ctrl-C to the race (which ends the workers when it stops)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _race_one_in_process(job: tuple[str, str, int, RaceSettings]) -> RaceRun:
    """:func:`race_one` of ``(method, dtype, seed, settings)`` in a worker process (its own threads and problem)."""
    method, dtype, seed, settings = job
    torch.set_num_threads(settings.threads)
    return race_one(method, dtype, seed, load_problem(settings.config), settings)


def _measured(settings: RaceSettings) -> dict:
    return {k: v for k, v in asdict(settings).items() if k not in RUN_INDEPENDENT}


def load_runs(path: Path) -> tuple[dict, list[RaceRun]]:
    """A ``race.json``'s settings and runs (a missing or spoiled file is refused in one line)."""
    try:
        data = json.loads(path.read_text())
        runs = [RaceRun(**{**r, "points": [tuple(p) for p in r["points"]]}) for r in data["runs"]]
        return dict(data["settings"]), runs
    except FileNotFoundError:
        raise GFConfigError(f"race: no {path}; allowed: an --out a race has written into") from None
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise GFConfigError(f"race: {path} is not a race's record ({type(err).__name__}: {err}); allowed: the "
                            "race.json a race wrote") from None


def run_race(settings: RaceSettings, out: Path, log: Callable[[str], None] = print) -> list[RaceRun]:
    """Every method × dtype × seed (``settings.jobs`` at a time), written to ``out/race.json`` as each run ends.

    Runs already in ``out/race.json`` from a race on the same measuring settings are kept and not run again; a race.json
    from other settings is refused (a new ``--out`` is needed)."""
    check(settings)
    torch.set_num_threads(settings.threads)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[RaceRun] = []
    if (out / "race.json").is_file():
        saved, runs = load_runs(out / "race.json")
        mismatched = sorted(k for k, v in _measured(settings).items() if json.loads(json.dumps(v)) != saved.get(k))
        if mismatched:
            raise GFConfigError(f"race --out {out}: its race.json was run with other {', '.join(mismatched)}; "
                                "allowed: the same settings (to add runs) or a new --out")
    done = {(r.method, r.dtype, r.seed) for r in runs}
    todo = [(m, d, s) for s in settings.seeds for d in settings.dtypes for m in settings.methods
            if (m, d, s) not in done]

    def finished(run: RaceRun) -> None:
        runs.append(run)
        log(f"{run.method:<12} {run.dtype} seed {run.seed}: {run.steps} steps, error {run.points[-1][1]:.3g} after "
            f"{run.points[-1][0]:.1f} s (best {min(e for _, e in run.points):.3g})")
        write_atomic(out / "race.json", json_text({"settings": asdict(settings), "runs": [asdict(r) for r in runs]}))

    if settings.jobs == 1:
        problem = load_problem(settings.config)
        for method, dtype, seed in todo:
            finished(race_one(method, dtype, seed, problem, settings))
        return runs
    context = multiprocessing.get_context("spawn")
    with context.Pool(settings.jobs, initializer=_worker_start) as pool:  # leaving the block ends the workers
        for run in pool.imap_unordered(_race_one_in_process, [(m, d, s, settings) for m, d, s in todo]):
            finished(run)
    return runs


# -- the report --------------------------------------------------------------------------------------------------------
def first_reach(points: list[tuple[float, float]], threshold: float) -> float:
    """The first recorded time at which the error is ≤ ``threshold`` (``inf`` if never)."""
    return next((t for t, e in points if e <= threshold), math.inf)


def table(runs: list[RaceRun]) -> str:
    """Markdown: per method and dtype (in :data:`DTYPES` and :data:`METHODS` order), the medians over seeds of the time
    to each of :data:`THRESHOLDS` and of the best error."""
    groups: dict[tuple[str, str], list[RaceRun]] = {}
    for run in runs:
        groups.setdefault((run.method, run.dtype), []).append(run)
    fmt = lambda s: "—" if not math.isfinite(s) else f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"  # noqa: E731
    heads = " | ".join(f"time to {t:g}" for t in THRESHOLDS)
    lines = [f"| method | dtype | seeds | {heads} | best error | steps |",
             "|---|---|---|" + "---|" * (len(THRESHOLDS) + 2)]
    order = lambda key: (DTYPES.index(key[1]), METHODS.index(key[0]))  # noqa: E731
    for (method, dtype), group in sorted(groups.items(), key=lambda item: order(item[0])):
        reach = [statistics.median(first_reach(r.points, t) for r in group) for t in THRESHOLDS]
        best = statistics.median(min(e for _, e in r.points) for r in group)
        steps = statistics.median(r.steps for r in group)
        lines.append(f"| {method} | {dtype} | {len(group)} | " + " | ".join(fmt(s) for s in reach)
                     + f" | {best:.3g} | {steps:.0f} |")
    return "\n".join(lines) + "\n"


def report(out: Path) -> None:
    """``race.png`` and ``race.md`` from ``out/race.json``."""
    plt = pyplot()
    settings, runs = load_runs(out / "race.json")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = dict(zip(METHODS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    seen = set()
    for run in runs:
        label = f"{run.method} ({run.dtype})"
        ts, es = zip(*run.points)
        ax.plot([max(t, 1e-2) for t in ts], es, color=colours[run.method], ls="-" if run.dtype == "float64" else "--",
                lw=1.2, label=None if label in seen else label)
        seen.add(label)
    clock = "CPU seconds, one thread" if settings.get("clock") == "cpu" else "wall-clock seconds"
    ax.set(xscale="log", yscale="log", xlabel=f"training time ({clock})", ylabel="relative L² error",
           title="Burgers PINN (Example 5): relative L² error against training time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "race.png", dpi=120)
    plt.close(fig)
    seeds = sorted({r.seed for r in runs})
    (out / "race.md").write_text(f"Budget {settings['budget']:g} s ({clock}) a run, seeds {seeds}, "
                                 f"{settings['threads']} thread(s) a run.\n\n" + table(runs))
