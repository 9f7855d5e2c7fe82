"""Running a plan's runs: in this process one after the other (``jobs`` 1), or in ``jobs`` worker processes at once, the
longest runs first.

A worker is a fresh (spawned) Python process that trains one run after another with ``threads`` intra-op threads,
through :func:`.in_process.run_one` as in this process: each run seeds itself (its config's ``seed_everything``), so
that a run gives the same numbers bit for bit in a worker as in this process at the same thread count
(``tests/test_reproduce.py``). Each run's progress comes back to this process as :class:`~.progress.Tick` records over a
queue; each result as a :class:`Finished` record, in the order the runs end.

The order: the runs are queued longest first (:func:`estimated_seconds`) and each worker takes the next when it is free,
so that the short runs fill the gaps at the end: on 2 cores, the seed's four experiments (exp1's six 1000-epoch runs,
exp4's IEQ (full) at ~4 s an epoch, then the rest) end within a short run of each other.

A worker that dies (killed, out of memory) takes with it the runs that had not ended: they are recorded as errors, and
the reports are written with the others' results.
"""

from __future__ import annotations

import importlib
import inspect
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import yaml

from . import in_process
from .progress import Tick
from .records import RunResult, RunSpec, Settings

#: :func:`estimated_seconds`: the time of one multiply-add in a step's matrix products on one core, and the fixed cost
#: of an optimizer step (Python, the optimizer's own loop, Lightning's hooks); measured on exp1 (SGD 0.1 s an epoch,
#: Adam and IEQ (full) at batch 64 ~0.35 s), rough elsewhere: only the order of the runs depends on it
SECONDS_PER_MAC, SECONDS_PER_STEP = 1e-10, 1.5e-3


@dataclass(frozen=True)
class Finished:
    """A run that has ended, with when it started and ended (``time.monotonic()``: on Linux one clock for every process
    of the machine)."""

    index: int  #: the run's place in the plan
    result: RunResult
    started: float
    ended: float


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_jobs(threads: int | None) -> int:
    """As many worker processes as the usable cores hold at ``threads`` intra-op threads each (at least 1); 1 when
    ``threads`` is None (torch then takes every core in one process)."""
    return max(1, usable_cores() // threads) if threads else 1


def estimated_seconds(spec: RunSpec) -> float:
    """A rough time for the run on one core, from its config alone: its optimizer steps (epochs × mini-batches an
    epoch), each the multiply-adds of a forward and backward pass of the batch (3 · parameters · batch) plus, for IEQ
    (full Jacobian), the ``(B·k)³/3`` of the Cholesky factorisation of its ``B·k × B·k`` system; at SECONDS_PER_MAC per
    multiply-add plus SECONDS_PER_STEP per step. Only used to start the longest runs first (it puts exp4's IEQ (full),
    whose large factorisation runs faster per multiply-add than the rest, at ~4 times its time: still first). What the
    config does not say (a data set's size, a network's width) is taken from the class's defaults, else from exp1's."""
    config = yaml.safe_load(spec.config.read_text()) or {}
    model = config.get("model") or {}
    data, net = config.get("data") or {}, model.get("net") or {}
    batch = _count(data, "batch_size", 256)
    fraction = _init_arg(data, "train_fraction", 0.8)
    n_train = _count(data, "n_train", 0) or round(_count(data, "n_samples", 10_000) * (
        fraction if isinstance(fraction, float) and 0 < fraction < 1 else 0.8))
    d, m, k = _count(net, "d", 40), _count(net, "m", 1000), _count(net, "k", 1)
    macs = 3 * ((d + 1) * m + (m + 1) * k) * batch
    if str((model.get("optimizer") or {}).get("class_path", "")).rpartition(".")[2] == "IEQ":
        macs += (batch * k) ** 3 / 3
    steps = spec.epochs * math.ceil(n_train / batch)
    return steps * (SECONDS_PER_STEP + SECONDS_PER_MAC * macs)


def _count(section: dict, name: str, default: int) -> int:
    """A positive integer setting (:func:`_init_arg`), else ``default``."""
    value = _init_arg(section, name, default)
    return value if isinstance(value, int) and value > 0 else default


def _init_arg(section: dict, name: str, default: Any) -> Any:
    """``name`` as a config section (``{class_path, init_args}``) sets it, else its default in the class's signature,
    else ``default``."""
    init_args = section.get("init_args") or {}
    if name in init_args:
        return init_args[name]
    try:
        module, _, cls = str(section["class_path"]).rpartition(".")
        parameter = inspect.signature(getattr(importlib.import_module(module), cls)).parameters[name]
    except (KeyError, ValueError, ImportError, AttributeError, TypeError):
        return default
    return default if parameter.default is inspect.Parameter.empty else parameter.default


def longest_first(plan: list[RunSpec]) -> list[int]:
    """The plan's indices, the longest run (:func:`estimated_seconds`) first; ties in the plan's order."""
    seconds = [estimated_seconds(spec) for spec in plan]
    return sorted(range(len(plan)), key=lambda i: -seconds[i])


def run_plan(
    plan: list[RunSpec], settings: Settings, report: Callable[[Tick], None] | None = None
) -> Iterator[Finished]:
    """Train every run of ``plan``, reporting each one's start and epochs to ``report``; yield each as it ends. With
    ``settings.jobs`` 1, in this process in the plan's order, each run only when the previous one has been taken: what
    the caller does in between (writing an experiment's report) happens before the next run starts."""
    if settings.jobs <= 1:
        for index, spec in enumerate(plan):
            started = time.monotonic()
            result = in_process.run_one(spec, settings, index, report)
            yield Finished(index, result, started, time.monotonic())
        return
    yield from _in_workers(plan, settings, report)


def _in_workers(plan: list[RunSpec], settings: Settings, report: Callable[[Tick], None] | None) -> Iterator[Finished]:
    context = multiprocessing.get_context("spawn")  # a fork would copy this process's torch threads and locks
    ticks = context.Queue()
    listener = threading.Thread(target=_relay, args=(ticks, report), daemon=True)
    listener.start()
    jobs = max(1, min(settings.jobs, len(plan)))
    threads = settings.threads or max(1, usable_cores() // jobs)  # not given: the cores shared out
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(ticks, threads))
    try:
        futures = {pool.submit(_work, plan[i], settings, i): i for i in longest_first(plan)}  # queued in this order
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = futures[future]
                try:
                    yield future.result()
                except Exception as err:  # a worker died (killed, out of memory): the runs not ended yet are lost
                    now = time.monotonic()
                    yield Finished(index, _lost(plan[index], settings, err), now, now)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        ticks.put(None)
        listener.join()


def _relay(ticks, report: Callable[[Tick], None] | None) -> None:
    while (tick := ticks.get()) is not None:
        if report is not None:
            report(tick)


def _lost(spec: RunSpec, settings: Settings, err: BaseException) -> RunResult:
    run_dir = settings.out / f"exp{spec.experiment}" / spec.method
    config = in_process.root_path(spec.config, settings.root)
    result = RunResult(spec.experiment, spec.method, config, str(run_dir), spec.epochs,
                       in_process.cli_args(spec, run_dir, settings))
    result.status, result.message = "error", f"its worker process ended: {type(err).__name__}: {err}"
    return result


# -- in the worker process ---------------------------------------------------------------------------------------------
_ticks = None  # the queue to this process's parent


def _start_worker(ticks, threads: int) -> None:
    global _ticks
    _ticks = ticks
    import torch

    torch.set_num_threads(threads)


def _work(spec: RunSpec, settings: Settings, index: int) -> Finished:
    started = time.monotonic()
    with in_process.quiet_lightning():
        result = in_process.run_one(spec, settings, index, _ticks.put)
    return Finished(index, result, started, time.monotonic())
