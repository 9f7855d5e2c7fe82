"""The Burgers PINN of Ma, Mao & Shen (2024), Example 5 (Fig. 12): the solution figure (u predicted, exact, and their
difference over x–t), the training curves of several runs, and the table of what each run reached.

A run is a folder ``.../lightning_logs/<experiment>/<run>/version_N`` written by ``python -m gf_lightning fit --config
configs/paper/burgers.yaml …``: its ``config.yaml`` (the network and ν), its ``checkpoints/last.ckpt`` (the weights) and
its TensorBoard events (``train/loss``, ``val/rel_l2``). matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from ...problems.burgers import NU, burgers_exact
from ..events import read_scalars, values
from ..methods import COLORS, label
from ..plotting import MARKERS, pyplot

DASHES = ("-", "--", "-.", ":")
#: validation points of the methods at one step are drawn this fraction of the longest run apart
DODGE = 0.006
#: the table's order: the paper's Fig. 12 methods first, then the others of the project
ORDER = ("adam", "adagrad", "rmsprop", "asav", "aressav", "arelsav", "sgd", "sav", "ieq")
#: "converged": the training loss ends below this fraction of where it started (0.394 for every run here, seed 0) and
#: below the running minimum × :data:`CONVERGED_SPREAD` (not in a spike), with every value finite
CONVERGED_DROP = 1e-2
CONVERGED_SPREAD = 10.0


def _build(spec: dict) -> object:
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**(spec.get("init_args") or {}))


def load_run(run: str | Path) -> tuple[nn.Module, float]:
    """The trained network of a run folder (from its ``config.yaml`` and ``checkpoints/last.ckpt``) and its ν."""
    run = Path(run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    net = _build(config["model"]["net"])
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    nu = (config.get("data", {}).get("init_args") or {}).get("nu", NU)
    return net.eval(), float(nu)


def grid(nx: int = 256, nt: int = 101) -> tuple[torch.Tensor, torch.Tensor]:
    """``x ∈ [−1, 1]`` and ``t ∈ [0, 1]`` of the figure's grid, float64."""
    return torch.linspace(-1.0, 1.0, nx, dtype=torch.float64), torch.linspace(0.0, 1.0, nt, dtype=torch.float64)


def predict_grid(net: nn.Module, xs: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """``u(x, t)`` of the network on the grid, shape ``(nt, nx)``."""
    xg, tg = torch.meshgrid(xs, ts, indexing="xy")  # (nt, nx)
    dtype = next(net.parameters()).dtype
    with torch.no_grad():
        u = net(torch.stack([xg.reshape(-1), tg.reshape(-1)], 1).to(dtype))
    return u.reshape(xg.shape).double()


def solution_figure(net: nn.Module, path: str | Path, nu: float = NU, title: str = "", nx: int = 256, nt: int = 101,
                    slices: tuple[float, ...] = (0.25, 0.5, 0.75)) -> float:
    """Draw u predicted, u* exact and ``u − u*`` as x–t heatmaps (top), and u, u* at the times ``slices`` (bottom), to
    ``path``; returns the relative L² error ``‖u − u*‖ / ‖u*‖`` on the figure's grid."""
    plt = pyplot()
    xs, ts = grid(nx, nt)
    u = predict_grid(net, xs, ts)
    xg, tg = torch.meshgrid(xs, ts, indexing="xy")
    exact = burgers_exact(xg, tg, nu)
    rel = float((u - exact).norm() / exact.norm())
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), gridspec_kw={"height_ratios": [1.15, 1]})
    extent = (0.0, 1.0, -1.0, 1.0)  # t across, x up, as in Raissi et al.'s figure of this problem
    diff = (u - exact).numpy().T
    lim = float(abs(diff).max())
    for ax, data, name, cmap, vmin, vmax in (
        (axes[0, 0], u.numpy().T, "u(x, t), predicted", "RdBu_r", -1.0, 1.0),
        (axes[0, 1], exact.numpy().T, "u*(x, t), exact (Cole–Hopf)", "RdBu_r", -1.0, 1.0),
        (axes[0, 2], diff, f"u − u* (max |·| = {lim:.2g})", "PuOr_r", -lim, lim),
    ):
        im = ax.imshow(data, origin="lower", extent=extent, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("t")
        ax.set_ylabel("x")
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax, t_slice in zip(axes[1], slices):
        j = int(round(t_slice * (nt - 1)))
        ax.plot(xs.numpy(), exact[j].numpy(), color="black", lw=2, label="exact")
        ax.plot(xs.numpy(), u[j].numpy(), color="tab:red", ls="--", lw=1.5, label="predicted")
        ax.set_title(f"t = {float(ts[j]):.2f}", fontsize=10)
        ax.set_xlabel("x")
        ax.set_ylim(-1.15, 1.15)
    axes[1, 0].set_ylabel("u")
    axes[1, 0].legend(fontsize=8)
    fig.suptitle((title + "  —  " if title else "") + f"relative L² error {rel:.3g} on a {nx} × {nt} grid", fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return rel


@dataclass
class RunSummary:
    """What one run reached, from its TensorBoard events."""

    method: str
    lr: float
    steps: int
    first_loss: float
    final_loss: float
    min_loss: float
    final_rel_l2: float
    best_rel_l2: float
    wall_s: float  #: first to last event (the run's training and validation; not its start-up)
    finite: bool

    @property
    def converged(self) -> bool:
        return (self.finite and self.final_loss <= CONVERGED_DROP * self.first_loss
                and self.final_loss <= CONVERGED_SPREAD * self.min_loss)


def summarize(run: str | Path, method: str, lr: float) -> RunSummary:
    scalars = read_scalars(run)
    loss, rel = values(scalars, "train/loss"), values(scalars, "val/rel_l2")
    points = [p for tag in scalars.values() for p in tag]
    wall = max(p.wall for p in points) - min(p.wall for p in points) if points else math.nan
    finite = bool(loss) and all(math.isfinite(v) for v in loss + rel)
    nan = math.nan
    return RunSummary(method, lr, len(loss), loss[0] if loss else nan, loss[-1] if loss else nan,
                      min(loss) if loss else nan, rel[-1] if rel else nan, min(rel) if rel else nan, wall, finite)


def curves_figure(runs: dict[float, dict[str, str | Path]], path: str | Path) -> None:
    """Training loss (top) and held-out relative L² error (bottom) against the step, one column per step size, every
    method of ``runs`` (``{lr: {method: run folder}}``). Each method has a marker and a dash of its own (hollow on the
    validations and a little apart on the step axis, staggered along the loss), so that a curve under another still
    shows; a run with fewer steps than the longest of its column (stopped early, or run shorter) ends in a ■ at its last
    step."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    lrs = sorted(runs, reverse=True)
    fig, axes = plt.subplots(2, len(lrs), figsize=(6.5 * len(lrs), 8), squeeze=False, sharey="row")
    for col, lr in enumerate(lrs):
        read = {method: read_scalars(run) for method, run in runs[lr].items()}
        longest = max((len(s.get("train/loss", [])) for s in read.values()), default=0)
        for i, (method, scalars) in enumerate(read.items()):
            style = dict(color=COLORS.get(method), label=label(method), lw=1.2, marker=MARKERS[i % len(MARKERS)], ms=5,
                         ls=DASHES[i % len(DASHES)])
            loss = scalars.get("train/loss", [])
            axes[0, col].plot([p.step for p in loss], [p.value for p in loss],
                              markevery=(i * 17 % 97, max(1, longest // 10)), **style)
            rel = scalars.get("val/rel_l2", [])
            shift = (i - (len(read) - 1) / 2) * DODGE * longest  # validations side by side, none hidden under another
            axes[1, col].plot([p.step + shift for p in rel], [p.value for p in rel], markerfacecolor="none", **style)
            if loss and len(loss) < longest:
                for row, points in ((0, loss), (1, rel)):
                    if points:
                        axes[row, col].plot([points[-1].step], [points[-1].value], marker="s", ms=9, ls="none",
                                            color=style["color"], markeredgecolor="black")
        axes[0, col].set_title(f"lr = {lr:g}")
        for row, name in ((0, "training loss (PDE + initial + boundary)"), (1, "relative L² error ‖u − u*‖/‖u*‖")):
            axes[row, col].set_yscale("log")
            axes[row, col].set_xlabel("optimizer step (full batch)")
            axes[row, col].grid(alpha=0.3, which="both")
            if col == 0:
                axes[row, col].set_ylabel(name)
        handles, _ = axes[0, col].get_legend_handles_labels()
        stopped = Line2D([], [], marker="s", ms=8, ls="none", color="0.5", markeredgecolor="black",
                         label="ended before the longest run: its last step")
        axes[0, col].legend(handles=[*handles, stopped], fontsize=8, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list[RunSummary], cpu: dict[tuple[str, float], float] | None = None) -> str:
    """The markdown table of the runs: final and best training loss, final and best relative L² error, steps, wall time
    (and CPU time when ``cpu`` has it), converged or not."""
    cpu = cpu or {}
    head = ["lr", "method", "steps", "final train loss", "min train loss", "final rel. L²", "best rel. L²", "wall s",
            "CPU s", "converged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = cpu.get((r.method, r.lr))
        lines.append("| " + " | ".join([
            f"{r.lr:g}", label(r.method), str(r.steps), f"{r.final_loss:.3g}", f"{r.min_loss:.3g}",
            f"{r.final_rel_l2:.3g}", f"{r.best_rel_l2:.3g}", f"{r.wall_s:.0f}", "—" if c is None else f"{c:.0f}",
            "yes" if r.converged else "no",
        ]) + " |")
    return "\n".join(lines)
