"""The study code: running configs through the CLI, reading their TensorBoard events back, figures and reports.

``scripts/reproduce.py`` (the seed's four experiments) and ``scripts/sweep.py`` (grids of settings, such as methods × step
sizes) are thin entry points over this package; the tests import it directly.
"""
