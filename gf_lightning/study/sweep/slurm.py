"""A sweep written for SLURM: ``<out>/sweep.sbatch``, a job array with one task per point, each running that point's
exact command and leaving in its folder the files a local run leaves (gathered afterwards with ``--report-only``)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from ..io import write_atomic
from .grid import Plan, Point
from .records import point_folder
from .runner import package_root

#: the command that gathers a sweep's runs and reports it
REPORT_COMMAND = "python -m gf_lightning.study sweep --report-only --out"


#: the point's folder, then its command: output, start time and exit code as a local run writes them
SLURM_RUN = r"""run() {
  dir=$1; shift
  rm -rf "$dir/lightning_logs" "$dir/log.txt" "$dir/started" "$dir/exit_code" "$dir/result.json"
  mkdir -p "$dir"
  date +%s.%N > "$dir/started"
  set +e
  "$@" > "$dir/log.txt" 2>&1
  code=$?
  set -e
  echo "$code" > "$dir/exit_code"
  exit "$code"
}
"""


def slurm_script(plan: Plan, points: list[Point], threads: int = 1, python: str = "python",
                 sbatch: list[str] | None = None) -> str:
    """A job-array script with one task per point, each running that point's exact command (``$PYTHON`` is ``python``
    unless set). Gather the results afterwards with ``--report-only``."""
    root = package_root()
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=gf-sweep",
        f"#SBATCH --array=0-{len(points) - 1}",
        f"#SBATCH --cpus-per-task={threads}",
        f"#SBATCH --output={Path(plan.out) / 'slurm' / '%A_%a.out'}",
        *(f"#SBATCH --{opt.removeprefix('--')}" for opt in sbatch or []),
        f"# written by: {plan.command}" if plan.command else "# written by gf_lightning.study.sweep.slurm",
        f"# {len(points)} points; when every task has ended: {REPORT_COMMAND} " + shlex.quote(plan.out),
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
        f"export PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads}",
        f"PYTHON=${{PYTHON:-{python}}}",
        SLURM_RUN,
        'case "${SLURM_ARRAY_TASK_ID:?submit this script with sbatch, or set SLURM_ARRAY_TASK_ID}" in',
    ]
    for i, point in enumerate(points):
        command = shlex.join(["-m", "gf_lightning", "fit", *point.args])
        lines.append(f"  {i}) run {shlex.quote(str(point_folder(point)))} \"$PYTHON\" {command} ;;")
    lines += ['  *) echo "no point for task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(lines)


def write_slurm(plan: Plan, points: list[Point], threads: int = 1, python: str = "python",
                sbatch: list[str] | None = None) -> Path:
    path = Path(plan.out) / "sweep.sbatch"
    (Path(plan.out) / "slurm").mkdir(parents=True, exist_ok=True)
    write_atomic(path, slurm_script(plan, points, threads, python, sbatch))
    path.chmod(0o755)
    return path
