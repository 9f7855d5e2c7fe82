"""The methods every study names, one registry: each method's optimizer class and variant (:class:`Method`), its label
and its colour in every figure, and what its ``energy/modified`` is.

A method is named as the configs ``configs/exp<N>_<method>.yaml`` name it (``ieq_adaptive``); a variant that is not the
class's default as ``<name>-<variant>`` (``sav-vanilla``), as a sweep's run folders name it. A reproduction run named
after a variant config (``expsav_restart`` for ``exp4_expsav_restart.yaml``) is labelled from its base method.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Method:
    """A method: an optimizer class and the settings that make it this method (its variant)."""

    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def optimizer_class(self) -> type:
        module, _, name = self.class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def accepts(self, name: str) -> bool:
        """Whether the optimizer's constructor takes the setting ``name`` (``C``, ``lam``, ``momentum``, …)."""
        return name in settings_of(self.optimizer_class())

    def optimizer(self, lr: float | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The whole optimizer, as ``--model.optimizer`` takes it: every setting of the class at its default, then this
        method's, then those of ``extra`` that the class accepts, then ``lr``."""
        settings = dict(settings_of(self.optimizer_class()))
        settings.update(self.init_args)
        settings.update({k: v for k, v in (extra or {}).items() if k in settings})
        if lr is not None:
            settings["lr"] = lr
        return {"class_path": self.class_path, "init_args": settings}


def settings_of(cls: type) -> dict[str, Any]:
    """``name → default`` of every constructor setting of ``cls`` (but ``params``) whose default a JSON value can
    carry."""
    out = {}
    for name, par in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "params") or par.kind in (par.VAR_POSITIONAL, par.VAR_KEYWORD) or par.default is par.empty:
            continue
        default = list(par.default) if isinstance(par.default, tuple) else par.default
        if default is None or isinstance(default, (bool, int, float, str, list)):
            out[name] = default
    return out


#: the methods by name, with their labels; SAV's default variant (``seed``) is its restart form (``r`` reset to
#: ``√(L + C)`` every step, so its energy may rise between steps), and says so
METHODS: dict[str, Method] = {
    "sgd": Method("torch.optim.SGD", {}, "SGD"),
    "adam": Method("torch.optim.Adam", {}, "Adam"),
    # SAV's seed form is its restart form
    "sav": Method("gf_lightning.optim.SAV", {"variant": "seed"}, "SAV (restart)"),
    "sav-vanilla": Method("gf_lightning.optim.SAV", {"variant": "vanilla"}, "SAV (vanilla)"),
    "sav-relax": Method("gf_lightning.optim.SAV", {"variant": "relax"}, "SAV (relax)"),
    "expsav": Method("gf_lightning.optim.ExpSAV", {"variant": "seed"}, "ExpSAV"),
    "expsav-restart": Method("gf_lightning.optim.ExpSAV", {"variant": "restart"}, "ExpSAV (restart)"),
    "expsav-vanilla": Method("gf_lightning.optim.ExpSAV", {"variant": "vanilla"}, "ExpSAV (vanilla)"),
    "expsav-relax": Method("gf_lightning.optim.ExpSAV", {"variant": "relax"}, "ExpSAV (relax)"),
    "ieq": Method("gf_lightning.optim.IEQ", {}, "IEQ (full)"),
    "ieq_adaptive": Method("gf_lightning.optim.IEQAdaptive", {"variant": "seed"}, "IEQ adaptive"),
    "ieq_adaptive-restart": Method("gf_lightning.optim.IEQAdaptive", {"variant": "restart"}, "IEQ adaptive (restart)"),
    "asav": Method("gf_lightning.optim.AdaptiveSAV", {"variant": "vanilla"}, "A-SAV"),
    "aressav": Method("gf_lightning.optim.AdaptiveSAV", {"variant": "restart"}, "A-ResSAV"),
    "arelsav": Method("gf_lightning.optim.AdaptiveSAV", {"variant": "relax"}, "A-RelSAV"),
    "aegd": Method("gf_lightning.optim.AEGD", {}, "AEGD"),
    "aegdm": Method("gf_lightning.optim.AEGDM", {}, "AEGDM"),
    "adagrad": Method("torch.optim.Adagrad", {}, "Adagrad"),
    "rmsprop": Method("torch.optim.RMSprop", {}, "RMSprop"),
}
#: the method of a sweep that keeps the config's own optimizer (only its step size varies)
CONFIG_METHOD = "config"
#: the seed's methods, in the order of its tables (the reproduction's and the sweep's default)
SEED_METHODS = ("sgd", "adam", "sav", "expsav", "ieq", "ieq_adaptive")
#: the methods the seed does not have (configs/exp<N>_<name>.yaml in every experiment; run them with --methods)
NEW_METHODS = ("asav", "aressav", "arelsav", "aegd", "aegdm")
#: the methods that log an energy (``energy/modified``, ``energy/true``, ``energy/violations``)
ENERGY_METHODS = ("sav", "expsav", "ieq_adaptive", "ieq", *NEW_METHODS)
#: each method's label
LABELS = {name: method.label for name, method in METHODS.items()}
#: a colour per method, the same in every figure (the reproduction's, the sweeps', the Burgers PINN's)
COLORS = {"sgd": "tab:gray", "adam": "tab:brown", "sav": "tab:blue", "expsav": "tab:orange", "ieq": "tab:green",
          "ieq_adaptive": "tab:red", "asav": "tab:purple", "aressav": "tab:pink", "arelsav": "tab:olive",
          "aegd": "tab:cyan", "aegdm": "navy", "adagrad": "gold", "rmsprop": "black"}
#: what ``energy/modified`` is, per method
ENERGY_MEANING = {"sav": "r² − C", "expsav": "log r − log C", "ieq_adaptive": "½q²",
                  "ieq": "‖q‖²/N after the step (the MSE's units)", "asav": "r² − C", "aressav": "r² − C",
                  "arelsav": "r² − C", "aegd": "mean of rᵢ² − c over coordinates",
                  "aegdm": "mean of rᵢ² − c over coordinates"}


def base(method: str) -> str:
    """The method a run name stands for: ``expsav`` for ``expsav_restart`` (a config ``exp4_expsav_restart.yaml``)."""
    return max((m for m in (*SEED_METHODS, *NEW_METHODS) if method == m or method.startswith(m + "_")), key=len,
               default=method)


def label(method: str) -> str:
    """``IEQ adaptive`` for ``ieq_adaptive``, ``SAV (vanilla)`` for ``sav-vanilla``, ``ExpSAV (restart)`` for
    ``expsav_restart``, ``SAV (restart, large step)`` for ``sav_large_step``, ``config's optimizer`` for ``config``."""
    if method in METHODS:
        return METHODS[method].label
    if method == CONFIG_METHOD:
        return "config's optimizer"
    suffix = method[len(base(method)) + 1 :].replace("_", " ")
    text = LABELS.get(base(method), method)
    if not suffix:
        return text
    return f"{text[:-1]}, {suffix})" if text.endswith(")") else f"{text} ({suffix})"
