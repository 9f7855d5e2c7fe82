"""Problem definitions as leaf modules (constants, domains, exact solutions), which the data modules that sample a
problem and the objectives that train on it both import, and neither imports the other through."""

from .burgers import BURGERS, burgers_exact
from .problem import Problem

__all__ = ["BURGERS", "Problem", "burgers_exact"]
