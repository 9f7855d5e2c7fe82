"""Checks of a run's settings that are not the project's own classes: torch's optimizers, Lightning's trainer flags, the
output folders, the config files (jsonargparse's own refusals are worded as one line by :mod:`.parser_messages`).

Each check raises :class:`~gf_lightning.errors.GFConfigError` with a message that names the setting (or the file), what
it was given and what is allowed; the command line prints it as one line and exits 2, before any work.
"""

from __future__ import annotations

import math
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from .errors import GFConfigError

# ----------------------------------------------------------------------------------------------------------------------
# torch's own optimizers, as strictly as the project's
# ----------------------------------------------------------------------------------------------------------------------
#: group setting → (test, what is allowed); lr > 0 as for SAV/ExpSAV/IEQ (lr = 0 trains nothing)
_TORCH_SETTINGS = {
    "lr": (lambda v: v > 0, "a finite number > 0"),
    "momentum": (lambda v: 0 <= v < 1, "a finite number in [0, 1)"),
    "dampening": (lambda v: 0 <= v <= 1, "a finite number in [0, 1]"),
    "weight_decay": (lambda v: v >= 0, "a finite number >= 0"),
    "eps": (lambda v: v > 0, "a finite number > 0"),
    "alpha": (lambda v: 0 <= v < 1, "a finite number in [0, 1)"),
    "rho": (lambda v: 0 <= v < 1, "a finite number in [0, 1)"),
    "lr_decay": (lambda v: v >= 0, "a finite number >= 0"),
    "initial_accumulator_value": (lambda v: v >= 0, "a finite number >= 0"),  # Adagrad
}


def _as_number(value: Any) -> float | None:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def check_torch_settings(optimizer: Any) -> None:
    """The settings a config gives a torch optimizer (the ``functools.partial`` that jsonargparse builds), checked
    before torch sees them: torch's own refusals ("Invalid momentum value: -0.5") name neither the setting's path nor
    the range."""
    from functools import partial

    from .optim.base import EnergyOptimizer

    if not isinstance(optimizer, partial):
        return
    cls = next((a for a in (optimizer.func, *optimizer.args) if isinstance(a, type)), None)
    if cls is None or not issubclass(cls, torch.optim.Optimizer) or issubclass(cls, EnergyOptimizer):
        return
    _check_group(dict(optimizer.keywords), cls.__name__)


def check_torch_optimizer(opt: torch.optim.Optimizer) -> None:
    """The settings of a torch optimizer (SGD, Adam, …) in every group: finite and in range, else a ``GFConfigError``
    whose message starts with the setting's name (the module prefixes ``model.optimizer.init_args.``)."""
    from .optim.base import EnergyOptimizer

    if isinstance(opt, EnergyOptimizer):  # validated by the class itself
        return
    for group in opt.param_groups:
        _check_group(group, type(opt).__name__)


def _check_group(group: dict[str, Any], name: str) -> None:
    for key, (ok, allowed) in _TORCH_SETTINGS.items():
        if key not in group or group[key] is None:
            continue
        value = _as_number(group[key])
        if value is None or not math.isfinite(value) or not ok(value):
            raise GFConfigError(f"{key} must be {allowed} ({name}); got {group[key]!r}")
    if "betas" in group:
        betas = group["betas"]
        values = [_as_number(b) for b in betas] if isinstance(betas, (tuple, list)) else [None]
        if len(values) != 2 or any(b is None or not 0 <= b < 1 for b in values):
            raise GFConfigError(f"betas must be two numbers in [0, 1) ({name}); got {betas!r}")


# ----------------------------------------------------------------------------------------------------------------------
# Lightning's trainer flags
# ----------------------------------------------------------------------------------------------------------------------
def _get(cfg: Any, key: str, default: Any = None) -> Any:
    try:
        return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    except Exception:  # noqa: BLE001 - a namespace without the key
        return default


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _available_accelerators() -> list[str]:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = sorted(AcceleratorRegistry.available_accelerators())
    here = []
    for name in names:
        try:
            if AcceleratorRegistry[name]["accelerator"].is_available():
                here.append(name)
        except Exception:  # noqa: BLE001 - an accelerator whose probe fails is not available
            pass
    return ["auto", *here]


def check_trainer_flags(trainer: Any) -> None:
    """The trainer flags that Lightning would refuse with a traceback (or only at the first step), and those that manual
    optimization, which every method here uses, cannot honour."""
    # (max_steps Lightning refuses itself, in a line that names it, the value and what is allowed)
    for key, low in (("max_epochs", -1), ("min_epochs", 0), ("min_steps", 0)):
        value = _get(trainer, key)
        if value is not None and (not _is_int(value) or value < low):
            allowed = "-1 (no limit), 0, 1, 2, … or null" if low == -1 else "0, 1, 2, … or null"
            raise GFConfigError(f"trainer.{key}={value!r}; allowed: {allowed}")

    for key, low in (("check_val_every_n_epoch", 1), ("log_every_n_steps", 0)):
        value = _get(trainer, key)
        if value is not None and (not _is_int(value) or value < low):
            raise GFConfigError(f"trainer.{key}={value!r}; allowed: an integer >= {low} or null")

    accelerator = _get(trainer, "accelerator")
    if isinstance(accelerator, str):
        here = _available_accelerators()
        wanted = accelerator.lower()
        if wanted == "gpu":
            ok = "cuda" in here or "mps" in here
        else:
            from lightning.pytorch.accelerators import AcceleratorRegistry

            if wanted not in ("auto", *AcceleratorRegistry.available_accelerators()):
                raise GFConfigError(f"trainer.accelerator={accelerator!r} is unknown; allowed here: {', '.join(here)}")
            ok = wanted in here
        if not ok:
            raise GFConfigError(
                f"trainer.accelerator={accelerator!r}, but this machine has no such device (torch.cuda.is_available() "
                "is "
                f"{torch.cuda.is_available()}); allowed here: {', '.join(here)}"
            )

    devices = _get(trainer, "devices")
    allowed = "a number of devices >= 1, -1 (all), 'auto', or a non-empty list of device indices"
    if devices is not None and not (isinstance(devices, str) and devices.strip().lower() == "auto"):
        text = str(devices).strip()
        if isinstance(devices, (list, tuple)):
            bad = not devices or not all(_is_int(d) and d >= 0 for d in devices)
        elif _is_int(devices) or re.fullmatch(r"-?\d+", text):
            bad = int(text) == 0 or int(text) < -1
        else:
            bad = not re.fullmatch(r"\d+(\s*,\s*\d+)*\s*,?", text)
        if bad:
            raise GFConfigError(f"trainer.devices={devices!r}; allowed: {allowed}")

    num_nodes = _get(trainer, "num_nodes")
    if num_nodes is not None and (not _is_int(num_nodes) or num_nodes < 1):
        raise GFConfigError(f"trainer.num_nodes={num_nodes!r}; allowed: an integer >= 1")

    strategy = _get(trainer, "strategy")
    if isinstance(strategy, str):
        from lightning.pytorch.strategies import StrategyRegistry

        names = StrategyRegistry.available_strategies()
        if strategy.lower() not in ("auto", *names):
            short = [n for n in names if "find_unused" not in n]
            raise GFConfigError(
                f"trainer.strategy={strategy!r} is unknown; allowed: auto, {', '.join(short)} (and the ddp forms' "
                "_find_unused_parameters_true/false variants), or a Strategy class"
            )

    max_time = _get(trainer, "max_time")
    if max_time is not None and not isinstance(max_time, timedelta):
        fmt = "a string DD:HH:MM:SS (e.g. 00:12:00:00), a mapping such as {hours: 12}, or null"
        if isinstance(max_time, str):
            if not re.fullmatch(r"\d+:\d\d:\d\d:\d\d", max_time.strip()):
                raise GFConfigError(f"trainer.max_time={max_time!r}; allowed: {fmt}")
        elif isinstance(max_time, dict):
            try:
                timedelta(**max_time)
            except (TypeError, ValueError, OverflowError):
                raise GFConfigError(f"trainer.max_time={max_time!r}; allowed: {fmt}") from None
        else:
            raise GFConfigError(f"trainer.max_time={max_time!r}; allowed: {fmt}")

    manual = "every method here steps the optimizer itself (manual optimization), which Lightning cannot {}"
    clip = _get(trainer, "gradient_clip_val")
    if clip is not None and not (_as_number(clip) is not None and _as_number(clip) <= 0):
        raise GFConfigError(
            f"trainer.gradient_clip_val={clip!r} is not supported: {manual.format('clip')}; allowed: null or 0 "
            "(an energy-stable step sets its own step size)"
        )
    accumulate = _get(trainer, "accumulate_grad_batches")
    if accumulate is not None and accumulate != 1:
        raise GFConfigError(
            f"trainer.accumulate_grad_batches={accumulate!r} is not supported: {manual.format('accumulate')}; allowed: "
            "1 "
            "(use a larger data.batch_size instead)"
        )


# ----------------------------------------------------------------------------------------------------------------------
# the output folders
# ----------------------------------------------------------------------------------------------------------------------
def check_writable_folder(setting: str, path: str | os.PathLike) -> None:
    """``path`` is a folder this process can write into, or can be created: its nearest existing ancestor is a folder
    that we may write into. Nothing is created."""
    if "://" in str(path):  # a remote store (s3://, gs://, …) that fsspec writes to: not a local folder to check
        return
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == target else f"lies inside {existing}, which is a file"
        raise GFConfigError(f"{setting}={str(path)!r} {what}; allowed: a folder (existing or to be created)")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == target else f" (it would be created in {existing})"
        raise GFConfigError(
            f"{setting}={str(path)!r} is not writable{where}; allowed: a folder this process may write into"
        )


def check_output_folders(config: Any) -> None:
    """The run folder (``trainer.default_root_dir``, or the current directory) and every ``checkpoint.dirpath``."""
    trainer = _get(config, "trainer")
    root = _get(trainer, "default_root_dir") if trainer is not None else None
    check_writable_folder("trainer.default_root_dir", root or os.getcwd())
    checkpoint = _get(config, "checkpoint")
    dirpath = _get(checkpoint, "dirpath") if checkpoint is not None else None
    if dirpath:
        check_writable_folder("checkpoint.dirpath", dirpath)


# ----------------------------------------------------------------------------------------------------------------------
# config files
# ----------------------------------------------------------------------------------------------------------------------
_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def config_files(args: list[str]) -> list[tuple[str, str]]:
    """``(option, path)`` of every config file on the command line: the value of ``--config`` and any YAML/JSON file
    given to another option (``--trainer configs/trainer/ddp_cpu.yaml``)."""
    found = []
    for i, arg in enumerate(args):
        if arg.startswith("--") and "=" in arg:
            option, value = arg.split("=", 1)
        elif i > 0 and args[i - 1].startswith("--") and "=" not in args[i - 1] and not arg.startswith("--"):
            option, value = args[i - 1], arg
        else:
            continue
        if (option == "--config" or value.lower().endswith(_CONFIG_SUFFIXES)) and os.path.isfile(value):
            found.append((option, value))
    return found


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a mapping that gives a key twice raises :class:`_DuplicateKey` (PyYAML, and so
    jsonargparse, keep the last value without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(key, seen[key], line)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def check_seed(value: Any) -> None:
    """``seed_everything``: true/false, or an integer that numpy's generator takes (Lightning seeds it too)."""
    if value is None or isinstance(value, bool):
        return
    if not _is_int(value) or not 0 <= value <= 2**32 - 1:
        raise GFConfigError(f"seed_everything={value!r}; allowed: an integer from 0 to {2**32 - 1} (numpy's range), "
                            "true (a random seed) or false")


def check_config_files(args: list[str]) -> None:
    """Each config file decodes as UTF-8 (YAML's encoding), is not empty, and gives no key twice in one mapping."""
    for option, path in config_files(args):
        data = Path(path).read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise GFConfigError(
                f"{option} {path}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); allowed: a YAML file "
                "saved as UTF-8"
            ) from None
        if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
            raise GFConfigError(
                f"{option} {path}: the file is empty (no settings); allowed: a YAML mapping of settings"
            )
        try:
            content = yaml.load(text, Loader=_UniqueKeyLoader)
        except _DuplicateKey as dup:
            raise GFConfigError(
                f"{option} {path}: the key {dup.key!r} is given twice in one mapping (lines {dup.first} and "
                f"{dup.second}); "
                "YAML would keep the last silently; allowed: each key once"
            ) from None
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise GFConfigError(
                f"{option} {path}: not valid YAML{at}: {problem}; allowed: a YAML mapping of settings"
            ) from None
        if not isinstance(content, dict):
            raise GFConfigError(
                f"{option} {path}: holds a {type(content).__name__}, not settings; allowed: a YAML mapping of settings"
            )
