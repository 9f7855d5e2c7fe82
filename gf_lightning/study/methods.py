"""The methods a study runs: their names (as the configs ``configs/exp<N>_<method>.yaml`` spell them), labels, and what
each one's ``energy/modified`` is."""

from __future__ import annotations

#: the seed's methods, in the order of its tables
METHODS = ("sgd", "adam", "sav", "expsav", "ieq", "ieq_adaptive")
#: the methods the seed does not have (configs/exp<N>_<name>.yaml in every experiment; run them with --methods)
NEW_METHODS = ("asav", "aressav", "arelsav", "aegd", "aegdm")
#: the methods that log an energy (``energy/modified``, ``energy/true``, ``energy/violations``)
ENERGY_METHODS = ("sav", "expsav", "ieq_adaptive", "ieq", *NEW_METHODS)
#: a method's label; SAV's default variant (``seed``) is its restart form (``r`` reset to ``√(L + C)`` every step, so its
#: energy may rise between steps), and says so
LABELS = {"sgd": "SGD", "adam": "Adam", "sav": "SAV (restart)", "expsav": "ExpSAV", "ieq": "IEQ (full)",
          "ieq_adaptive": "IEQ adaptive",
          "asav": "A-SAV", "aressav": "A-ResSAV", "arelsav": "A-RelSAV", "aegd": "AEGD", "aegdm": "AEGDM"}
#: a colour per method, the same in every figure (the reproduction's, the sweeps', the Burgers PINN's)
COLORS = {"sgd": "tab:gray", "adam": "tab:brown", "sav": "tab:blue", "expsav": "tab:orange", "ieq": "tab:green",
          "ieq_adaptive": "tab:red", "asav": "tab:purple", "aressav": "tab:pink", "arelsav": "tab:olive",
          "aegd": "tab:cyan", "aegdm": "navy", "adagrad": "gold", "rmsprop": "black"}
#: what ``energy/modified`` is, per method
ENERGY_MEANING = {"sav": "r² − C", "expsav": "log r − log C", "ieq_adaptive": "½q²",
                  "ieq": "‖q‖²/N after the step (the MSE's units)", "asav": "r² − C", "aressav": "r² − C",
                  "arelsav": "r² − C", "aegd": "mean of rᵢ² − c over coordinates", "aegdm": "mean of rᵢ² − c over coordinates"}


def base(method: str) -> str:
    """The method a run name stands for: ``expsav`` for ``expsav_restart`` (a config ``exp4_expsav_restart.yaml``)."""
    return max((m for m in (*METHODS, *NEW_METHODS) if method == m or method.startswith(m + "_")), key=len, default=method)


def label(method: str) -> str:
    """``IEQ adaptive`` for ``ieq_adaptive``, ``ExpSAV (restart)`` for ``expsav_restart``, ``SAV (restart, large step)``
    for ``sav_large_step``."""
    suffix = method[len(base(method)) + 1 :].replace("_", " ")
    text = LABELS.get(base(method), method)
    if not suffix:
        return text
    return f"{text[:-1]}, {suffix})" if text.endswith(")") else f"{text} ({suffix})"
