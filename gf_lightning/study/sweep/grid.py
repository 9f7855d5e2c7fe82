"""A sweep's grid: the methods, the axes (any config key, step sizes and seeds among them), their cartesian product, and
the exact command line of each point.

A point runs as ``python -m gf_lightning fit --config CONFIG <overrides>``, the command a user runs. Its overrides, in
order: the method's whole optimizer as one value (``--model.optimizer={"class_path": …, "init_args": {…}}``, every
setting of the class spelled out, so that nothing of the config's optimizer survives: jsonargparse keeps a config's
``C`` and ``lam`` for a new class that accepts them, ``--model.optimizer=SAV`` included), then each grid axis as
``--KEY=VALUE``, then the sweep's fixed settings (no progress bar, the run's folder, …).

>>> plan = Plan.build("configs/exp3_sgd.yaml", methods=["sgd", "sav"], lr="1e-3:1e-1:3",
...                   out="/tmp/sw")  # doctest: +SKIP
>>> [p.name for p in plan.points()]  # doctest: +SKIP
['sgd__lr=0.001__…', 'sgd__lr=0.01__…', …]
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...errors import GFConfigError
from ..io import write_atomic
from ..methods import CONFIG_METHOD, METHODS, SEED_METHODS, settings_of

#: the step size's key: the x-axis of the sweep's figure
LR_KEY = "model.optimizer.init_args.lr"
#: the seed's key: the axis whose points are summarised as mean and spread
SEED_KEY = "seed_everything"
#: keys the sweep sets itself, which a grid may not vary
RESERVED = ("trainer.default_root_dir", "model.optimizer", "config")


class SweepError(GFConfigError):
    """A bad sweep input: the message names the setting, what was given and what is allowed, on one line."""


#: the default methods: the seed's six
DEFAULT_METHODS = SEED_METHODS


# -- parsing the command line's values ---------------------------------------------------------------------------------
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_NUMBER = r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"
_LOGSPACE = re.compile(rf"({_NUMBER}):({_NUMBER}):(\d+)")
GRID_FORM = "KEY=V1,V2,… or KEY=FROM:TO:N (N log-spaced numbers), KEY a setting of 'python -m gf_lightning fit --help'"


def split_values(text: str) -> list[str]:
    """``"a,[1,2],{"x": 1}"`` → ``["a", "[1,2]", '{"x": 1}']``: commas inside brackets, braces or quotes do not
    split."""
    out, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
    out.append(text[start:].strip())
    return out


def logspace(start: float, stop: float, n: int) -> list[str]:
    """``n`` numbers from ``start`` to ``stop``, evenly spaced in the logarithm, each written with 3 significant
    digits."""
    if n == 1:
        return [f"{start:.3g}"]
    a, b = math.log10(start), math.log10(stop)
    return [f"{10 ** (a + (b - a) * i / (n - 1)):.3g}" for i in range(n)]


def parse_values(setting: str, text: str) -> list[str]:
    """The values of one axis: a comma list, or ``FROM:TO:N`` (log-spaced). Raises :class:`SweepError` naming
    ``setting``."""
    match = _LOGSPACE.fullmatch(text.strip())
    if match:
        start, stop, n = float(match.group(1)), float(match.group(4)), int(match.group(7))
        if not (0 < start < stop and n >= 2):
            raise SweepError(
                f"{setting}: {text!r} is not a log-spaced range; allowed: FROM:TO:N with 0 < FROM < TO and N >= 2 "
                "(e.g. 1e-3:1e2:11)"
            )
        return logspace(start, stop, n)
    values = split_values(text)
    if not text.strip() or any(not v for v in values):
        raise SweepError(f"{setting}: {text!r} has an empty value; allowed: V1,V2,… (no empty entries) or FROM:TO:N")
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise SweepError(f"{setting}: {text!r} lists {', '.join(duplicates)} more than once; allowed: each value once")
    return values


def canonical_key(key: str) -> str:
    """``model.optimizer.lr`` → ``model.optimizer.init_args.lr`` (the command line accepts both): one name per
    setting."""
    for section in ("model.optimizer.", "model.net.", "model.objective.", "data."):
        short = key.startswith(section) and not key.startswith(section + "init_args.")
        if short and key.count(".") == section.count("."):
            return section + "init_args." + key[len(section):]
    return key


@dataclass(frozen=True)
class Axis:
    """One axis of the grid: a config key and the values it takes, as the command line writes them."""

    key: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str) -> Axis:
        """``"model.optimizer.init_args.lr=1e-3,1e-2"`` or ``"seed_everything=0,1,2"`` (see :data:`GRID_FORM`)."""
        key, sep, text = spec.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not _KEY.fullmatch(key):
            raise SweepError(f"--grid: {spec!r} is not an axis; allowed: {GRID_FORM}")
        key = canonical_key(key)
        if key in RESERVED or key.startswith("model.optimizer.class_path"):
            raise SweepError(
                f"--grid: {key} is set by the sweep itself; allowed: any other setting (the optimizer is chosen "
                "with --methods, its settings with --method-args)"
            )
        return cls(key, tuple(parse_values(f"--grid {key}", text)))

    @property
    def short(self) -> str:
        return "seed" if self.key == SEED_KEY else self.key.rpartition(".")[2]


def parse_method_args(items: list[str], methods: list[str]) -> dict[str, Any]:
    """``["C=100", "lam=4"]`` → ``{"C": 100, "lam": 4}`` (values read by :func:`parse_value`). Each must be a setting of
    at least one of ``methods``'s optimizers; a method whose optimizer lacks it runs without it."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()) or not text.strip():
            raise SweepError(f"--method-args: {item!r} is not a setting; allowed: NAME=VALUE, e.g. C=100 lam=4")
        name = name.strip()
        if name == "lr":
            raise SweepError("--method-args: lr is the sweep's step size; give it with --lr or --grid "
                             f"{LR_KEY}=…")
        accepting = [m for m in methods if m in METHODS and METHODS[m].accepts(name)]
        if not accepting:
            classes = {METHODS[m].optimizer_class() for m in methods if m in METHODS}
            names = sorted({s for cls in classes for s in settings_of(cls)} - {"lr"})
            raise SweepError(f"--method-args: no method of this sweep ({', '.join(methods)}) takes {name!r}; allowed: "
                             f"{', '.join(names) or 'none'}")
        try:
            out[name] = parse_value(text)
        except yaml.YAMLError as err:
            raise SweepError(
                f"--method-args: {item!r} has a value that is not YAML ({' '.join(str(err).split())})"
            ) from None
    return out


def parse_value(text: str) -> Any:
    """A setting's value as the command line means it: JSON first (``1e2`` is a number, which YAML 1.1 reads as text),
    then YAML (``relax``, ``true``, ``[0.9, 0.99]``)."""
    try:
        return json.loads(text)
    except ValueError:
        return yaml.safe_load(text)


# -- the plan ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One point of the grid: a method and one value of every axis; its folder, ``<out>/runs/<name>``, holds its run."""

    method: str
    settings: tuple[tuple[str, str], ...]  #: (key, value) for every axis, in the grid's order
    name: str  #: the folder's name: the method, the values of the axes that vary, and a hash of the whole command
    args: tuple[str, ...]  #: what follows ``python -m gf_lightning fit``, the run's folder included

    @property
    def values(self) -> dict[str, str]:
        return dict(self.settings)

    @property
    def lr(self) -> float:
        return float(self.values.get(LR_KEY, "nan"))

    @property
    def seed(self) -> str | None:
        return self.values.get(SEED_KEY)

    def series(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """What one line of the figure is: the method and the other optimizer settings of the grid."""
        return self.method, tuple((k, v) for k, v in self.settings if k.startswith("model.optimizer.") and k != LR_KEY)

    def panel(self) -> tuple[tuple[str, str], ...]:
        """What one panel of the figure is: the grid's settings outside the optimizer, but the seed."""
        return tuple((k, v) for k, v in self.settings if not k.startswith("model.optimizer.") and k != SEED_KEY)

    def group(self) -> tuple[tuple[str, str], ...]:
        """The settings that decide the initial weights and data (all but the optimizer's): one initial state each."""
        return tuple((k, v) for k, v in self.settings if not k.startswith("model.optimizer."))


@dataclass
class Plan:
    """A sweep: one config, methods × axes, and the settings every point shares. Written to ``<out>/plan.json``."""

    config: str  #: the config file, absolute
    methods: list[str]
    axes: list[Axis]
    out: str  #: the sweep's folder, absolute
    method_args: dict[str, Any] = field(default_factory=dict)
    common: list[str] = field(default_factory=list)  #: overrides every point ends with
    command: str = ""  #: the sweep's own command line, for the report

    @classmethod
    def build(cls, config: str | Path, methods: list[str] | None = None, lr: str | None = None,
              grid: list[str] | None = None, seeds: list[str] | None = None, method_args: list[str] | None = None,
              out: str | Path = "sweep", max_epochs: int | None = None, data_dir: str | None = None,
              checkpoints: bool = False, command: str = "") -> Plan:
        """A plan from the command line's values; a bad one raises :class:`SweepError`."""
        config = Path(config)
        if not config.is_file():
            raise SweepError(
                f"--config: {str(config)!r} is not a file; allowed: a config such as configs/exp3_sgd.yaml"
            )
        methods = list(methods or DEFAULT_METHODS)
        known = [*METHODS, CONFIG_METHOD]
        for m in methods:
            if m not in known:
                raise SweepError(f"--methods: unknown method {m!r}; allowed: {', '.join(known)}")
        if len(set(methods)) != len(methods):
            raise SweepError(f"--methods: {' '.join(methods)} names a method more than once; allowed: each once")
        axes = [Axis.parse(spec) for spec in grid or []]
        if lr is not None:
            axes.insert(0, Axis(LR_KEY, tuple(parse_values("--lr", lr))))
        if seeds:
            axes.append(Axis(SEED_KEY, tuple(parse_values("--seeds", ",".join(seeds)))))
        keys = [a.key for a in axes]
        for key in sorted({k for k in keys if keys.count(k) > 1}):
            given = "--lr and --grid" if key == LR_KEY else "--seeds and --grid" if key == SEED_KEY else "--grid twice"
            raise SweepError(f"{key} is given by {given}; allowed: one axis per setting")
        lr_axis = next((a for a in axes if a.key == LR_KEY), None)
        if lr_axis is None:
            raise SweepError(f"--lr: no step sizes given; allowed: --lr FROM:TO:N (log-spaced, e.g. 1e-3:1e2:11), --lr "
                             f"V1,V2,…, or --grid {LR_KEY}=…")
        for v in lr_axis.values:
            try:
                ok = float(v) > 0 and math.isfinite(float(v))
            except ValueError:
                ok = False
            if not ok:
                raise SweepError(f"--lr: {v!r} is not a step size; allowed: positive numbers")
        seed_axis = next((a for a in axes if a.key == SEED_KEY), None)
        for v in seed_axis.values if seed_axis is not None else ():
            if not re.fullmatch(r"\d+", v.strip()) or int(v) > 2**32 - 1:
                option = "--seeds" if seeds else f"--grid {SEED_KEY}"
                raise SweepError(
                    f"{option}: {v!r} is not a seed; allowed: integers from 0 to {2**32 - 1} (numpy's range)"
                )
        for key, option, value in (("trainer.max_epochs", "--max-epochs", max_epochs),
                                   ("data.init_args.data_dir", "--data-dir", data_dir)):
            if value is not None and key in keys:
                raise SweepError(f"{key} is given by {option} and --grid; allowed: one of them")
        prefix = "model.optimizer.init_args."
        for axis in axes:
            name = axis.key[len(prefix):]
            if axis.key.startswith(prefix) and axis.key != LR_KEY:
                for m in methods:
                    if m != CONFIG_METHOD and not METHODS[m].accepts(name):
                        raise SweepError(f"--grid {axis.key}: the method {m} ({METHODS[m].class_path}) has no setting "
                                         f"{name!r}; allowed: methods whose optimizer takes it, or the key of another "
                                         "setting")
        if max_epochs is not None and max_epochs < 1:
            raise SweepError(f"--max-epochs: {max_epochs} is not a number of epochs; allowed: an integer >= 1")
        check_out(out)
        common = ["--progress_bar.refresh_rate=0", "--trainer.enable_model_summary=false"]
        if not checkpoints:
            common.append("--trainer.enable_checkpointing=false")
        if max_epochs is not None:
            common.append(f"--trainer.max_epochs={max_epochs}")
        if data_dir is not None:
            common.append(f"--data.init_args.data_dir={Path(data_dir).resolve()}")
        return cls(str(config.resolve()), methods, axes, str(Path(out).resolve()),
                   parse_method_args(method_args or [], methods), common, command)

    # -- points --------------------------------------------------------------------------------------------------------
    def points(self) -> list[Point]:
        """The cartesian product methods × axes, methods outermost, the last axis innermost."""
        varying = [a for a in self.axes if len(a.values) > 1]
        shorts = [a.short for a in varying]
        names = {a.key: (a.short if shorts.count(a.short) == 1 else a.key.replace(".", "-")) for a in varying}
        out = []
        for method, *values in itertools.product(self.methods, *(a.values for a in self.axes)):
            settings = tuple(zip((a.key for a in self.axes), values))
            args = self.args(method, settings)
            digest = hashlib.sha1(json.dumps(identity(args)).encode()).hexdigest()[:8]
            readable = "__".join(f"{names[k]}={v}" for k, v in settings if k in names)
            name = _folder_safe("__".join(p for p in (method, readable, digest) if p))
            out.append(Point(method, settings, name, tuple([*args, f"--trainer.default_root_dir={self.runs / name}"])))
        return out

    @property
    def runs(self) -> Path:
        return Path(self.out) / "runs"

    def args(self, method: str, settings: tuple[tuple[str, str], ...]) -> list[str]:
        """The point's command line after ``fit`` (without its folder)."""
        args = ["--config", self.config]
        rest = list(settings)
        if method != CONFIG_METHOD:  # the whole optimizer as one value, the grid's optimizer settings in it
            prefix = "model.optimizer.init_args."
            mine = {k[len(prefix):]: parse_value(v) for k, v in settings if k.startswith(prefix) and k != LR_KEY}
            lr = float(dict(settings)[LR_KEY])
            args.append("--model.optimizer=" + json.dumps(METHODS[method].optimizer(lr, {**self.method_args, **mine})))
            rest = [(k, v) for k, v in settings if not k.startswith(prefix)]
        args += [f"--{k}={v}" for k, v in rest]
        return args + self.common

    def point_command(self, point: Point, python: str = "python") -> str:
        """The point's command, as a shell would run it."""
        return shlex.join([python, "-m", "gf_lightning", "fit", *point.args])

    # -- plan.json -----------------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "axes": [{"key": a.key, "values": list(a.values)} for a in self.axes]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        axes = [Axis(a["key"], tuple(a["values"])) for a in data["axes"]]
        return cls(**{**data, "axes": axes})

    def save(self) -> Path:
        path = Path(self.out) / "plan.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, out: str | Path) -> Plan:
        """The plan in ``<out>/plan.json``, its runs in ``out`` (wherever the sweep first ran: a copied or moved sweep
        is read and reported where it is now)."""
        check_out(out)
        path = Path(out) / "plan.json"
        if not path.is_file():
            raise SweepError(
                f"--report-only: {str(path)!r} does not exist; allowed: the --out folder of a sweep that was "
                "run or written for SLURM"
            )
        try:
            plan = cls.from_json(json.loads(path.read_text()))
            plan.points()
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            why = f"{type(err).__name__}: {' '.join(str(err).split())[:100]}"
            raise SweepError(f"--out: {str(path)!r} is not a sweep's plan (truncated or edited: {why}); allowed: the "
                             "plan.json a sweep wrote (run the sweep again with --config to write it anew)") from None
        plan.out = str(Path(out).resolve())
        return plan


def identity(args: list[str]) -> list[str]:
    """What names a run: its command line but where the data are read from and where it is written (the same run
    elsewhere)."""
    return [a for a in args if not a.startswith(("--data.init_args.data_dir=", "--trainer.default_root_dir="))]


def check_out(out: str | Path) -> None:
    """Refuse an ``--out`` that is a file, in one line."""
    if Path(out).exists() and not Path(out).is_dir():
        raise SweepError(f"--out: {str(out)!r} is a file; allowed: a folder (a new one, or a sweep's)")


def _folder_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name).strip("._") or "run"


def experiment_name(config: str | Path) -> str:
    """The config's ``experiment:`` (what its runs are filed under in TensorBoard), else the file's stem."""
    try:
        name = (yaml.safe_load(Path(config).read_text()) or {}).get("experiment")
    except (OSError, yaml.YAMLError, AttributeError):
        name = None
    return str(name) if name else Path(config).stem
