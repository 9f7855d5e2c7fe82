"""Energy-stable gradient-flow optimizers, as ``torch.optim.Optimizer`` subclasses.

>>> from gf_lightning.optim import ExpSAV
>>> opt = ExpSAV(model.parameters(), lr=0.1, C=1.0, lam=1.0)      # doctest: +SKIP
>>> loss = opt.step(closure)                                        # doctest: +SKIP

The package, one concern a file: ``settings`` (validation), ``logspace`` (arithmetic in logarithms, the relaxation),
``distributed`` (cross-rank reduction), ``jacobian`` (the Jacobian protocols IEQ works with, and ``J`` from a graph),
``krylov`` (conjugate gradients that keep IEQ's guarantee), ``base`` (global state, settings, closure, ``stats``),
``auxiliary`` (the scalar-auxiliary-variable step), and one file per method (``aegd`` holds AEGD and its momentum form
AEGDM, whose element-wise energy is not the scalar core's); IEQ's step is split into ``ieq`` (the optimizer),
``ieq_solve`` (its solves, pure functions), ``ieq_choice`` (``solver="auto"``) and ``ieq_distributed`` (DDP).
optim/ imports neither lightning nor the networks: a network hands IEQ its own Jacobian operator.
"""

from .adaptive_sav import AdaptiveSAV
from .aegd import AEGD, AEGDM
from .auxiliary import AuxiliaryVariableOptimizer
from .base import EnergyOptimizer, GFConfigError, GFStepError
from .expsav import ExpSAV
from .ieq import IEQ
from .ieq_adaptive import IEQAdaptive
from .sav import SAV

__all__ = [
    "SAV",
    "AdaptiveSAV",
    "ExpSAV",
    "IEQAdaptive",
    "IEQ",
    "AEGD",
    "AEGDM",
    "EnergyOptimizer",
    "AuxiliaryVariableOptimizer",
    "GFConfigError",
    "GFStepError",
    "OPTIMIZERS",
]

#: name → class, for scripts and error messages
OPTIMIZERS = {
    "sav": SAV,
    "expsav": ExpSAV,
    "ieq_adaptive": IEQAdaptive,
    "ieq": IEQ,
    "adaptive_sav": AdaptiveSAV,
    "aegd": AEGD,
    "aegdm": AEGDM,
}
