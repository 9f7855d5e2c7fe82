"""The studies: three pipelines over the CLI (``python -m gf_lightning fit``), each a sub-package with its command.

- :mod:`.reproduce`: the seed's four experiments, trained in this process or in worker processes, and their reports;
- :mod:`.sweep`: grids of settings (methods × step sizes × any config key × seeds) run as processes or a SLURM array,
  their reports and comparisons;
- :mod:`.paper`: the figures of Ma, Mao & Shen (2024) as small sweeps, the Burgers PINN's figure, and the PINN race.

They share the leaves here: the method registry (:mod:`.methods`), a run's outcome (:mod:`.outcome`), the TensorBoard
reader (:mod:`.events`), plotting (:mod:`.plotting`), tables (:mod:`.tables`), atomic writes (:mod:`.io`) and the
one-line end on a signal (:mod:`.interrupts`). ``python -m gf_lightning.study COMMAND …`` runs each pipeline's command
(:mod:`.__main__`); ``scripts/*.py`` are shims over the same commands.
"""
