"""IEQ's exact step on the Burgers PINN of configs/paper/burgers.yaml against its one big product, side by side.

    python scripts/bench_ieq_pinn.py                       # float64 and float32, all rows and a quarter of them
    python scripts/bench_ieq_pinn.py --dtypes float64 --fractions 1.0 --repeats 1

For each dtype and row fraction, one run measures: the exact step (``IEQ.step`` with ``solver="auto"``: the closure's
forward, the dense rows of ``J`` from :meth:`BurgersPINN.jacobian`, the Gram, the Cholesky, ``qⁿ⁺¹`` and the move), the
Jacobian build alone (``J build``: the batched Taylor-mode pass the step uses; ``J vmap``: ``torch.func.vmap`` of
``grad`` over points, the other option), and the step's one big product alone — ``JᵀJ`` (``N·P²`` multiply-adds) in
parameter space, ``J Jᵀ`` (``N²·P``) in residual space — on ``J`` itself: the physical limit of an exact step. Times are
the thread's CPU time on one thread (``--threads``; wall clock with more), the median over ``--repeats``, rounds
interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gf_lightning.components import MLP, BurgersPINN
from gf_lightning.components.pinn import BurgersRows
from gf_lightning.data import BurgersCollocation
from gf_lightning.optim.ieq import IEQ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[1.0, 0.25], help="row_fraction values")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    x0, y0 = BurgersCollocation().collocation()  # the config's 12 320 rows
    obj = BurgersPINN()
    kind = "thread CPU" if args.threads == 1 else "wall"
    print(f"torch {torch.__version__}, {args.threads} thread(s), {kind} seconds, median of {args.repeats}; "
          "the Burgers PINN (MLP 2-32x5-1), Δt = 1")
    header = (
        f"{'dtype':<8} {'N':>6} {'P':>5} {'space':<9} | {'step':>7} {'J build':>7} {'J vmap':>7} {'product':>7} | "
        f"{'step/product':>12} {'J share':>7}"
    )
    print(header)
    print("-" * len(header))
    for name in args.dtypes:
        dtype = getattr(torch, name)
        x, y = x0.to(dtype), y0.to(dtype)
        for fraction in args.fractions:
            torch.manual_seed(0)
            net = MLP().to(dtype)
            opt = IEQ(net.parameters(), lr=1.0, max_dense=8192, row_fraction=fraction)
            scale = obj.residual_scale(y)
            n_params = sum(p.numel() for p in net.parameters())
            n_rows = max(1, round(fraction * len(x)))

            def closure():
                opt.zero_grad()
                return obj.residual(obj.predict(net, x), y, scale)

            times: dict[str, list[float]] = {"step": [], "jac": [], "vmap": [], "product": []}
            space = "?"
            for _ in range(args.repeats):
                t0 = clock()
                opt.step(closure, jacobian_fn=lambda: obj.jacobian(net, x, y, scale))
                times["step"].append(clock() - t0)
                space = {0.0: "residual", 2.0: "parameter", 1.0: "cg"}[float(opt.stats["optim/solver"])]
                index = torch.randperm(len(x))[:n_rows]
                t0 = clock()
                jac = obj.jacobian(net, x, y, scale).block(index)
                times["jac"].append(clock() - t0)
                t0 = clock()
                BurgersRows(net, x, y, scale, obj.nu, method="vmap").block(index)
                times["vmap"].append(clock() - t0)
                t0 = clock()
                _ = jac.T @ jac if space == "parameter" else jac @ jac.T
                times["product"].append(clock() - t0)
                del jac, _
            t = {k: statistics.median(v) for k, v in times.items()}
            print(
                f"{name:<8} {n_rows:>6} {n_params:>5} {space:<9} | {t['step']:>7.2f} {t['jac']:>7.2f} "
                f"{t['vmap']:>7.2f} {t['product']:>7.2f} | {t['step'] / t['product']:>11.2f}x "
                f"{t['jac'] / t['step']:>6.0%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
