"""Step time of the energy-stable optimizers next to torch.optim.SGD, on the same model and batch.

    python scripts/bench_optim.py                 # 200 rounds at each shape
    python scripts/bench_optim.py --quick         # 40 rounds
    python scripts/bench_optim.py --rounds 500
    python scripts/bench_optim.py --threads 1     # one intra-op thread (steadier on a shared machine)
    python scripts/bench_optim.py --update-only   # the optimizer's own cost: the closure returns a cached loss
    python scripts/bench_optim.py --profile sav   # where one method's step spends its time (torch.profiler)

Shapes: exp1 (TwoLayerNet(d=40, m=1000, k=1), B = 256, MSE) and MNIST (TwoLayerNet(784, 100, 10), B = 256,
cross-entropy). A "step" is everything ``opt.step(closure)`` does: the closure (zero_grad, forward, backward) and the
update; relax calls the closure twice. Each method trains its own copy of the same initial network on the same fixed
batch. One run measures all methods side by side: every round takes one step of each method in turn (round robin, the
order rotated each round), so that drift in the machine's load hits every method alike; the table gives the median step
time and the median over rounds of the ratio to that round's SGD step. float32, the default number of threads unless
``--threads``.

Targets (issues): SAV, ExpSAV and IEQAdaptive in their seed form within 1.10× of SGD; A-SAV, AEGD and AEGDM no slower
than Adam (the table's last column).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from gf_lightning.components.nets import TwoLayerNet
from gf_lightning.optim import AEGD, AEGDM, SAV, AdaptiveSAV, ExpSAV, IEQAdaptive

SHAPES = {  # name: (d, m, k, B, loss)
    "exp1": (40, 1000, 1, 256, "mse"),
    "mnist": (784, 100, 10, 256, "ce"),
}

METHODS: dict[str, Callable] = {  # name: params -> optimizer (the seed's exp1 settings)
    "SGD": lambda p: torch.optim.SGD(p, lr=0.01),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "SAV": lambda p: SAV(p, lr=0.5, C=100.0, lam=4.0),
    "ExpSAV": lambda p: ExpSAV(p, lr=0.1, C=1.0, lam=1.0),
    "IEQAdaptive": lambda p: IEQAdaptive(p, lr=0.1),
    "SAV relax": lambda p: SAV(p, lr=0.5, C=100.0, lam=4.0, variant="relax"),
    "ExpSAV relax": lambda p: ExpSAV(p, lr=0.1, C=1.0, lam=1.0, variant="relax"),
    # beyond the seed (their configs' settings): compared with Adam, whose step-size strategy the first two share
    "A-SAV": lambda p: AdaptiveSAV(p, lr=1.0, C=100.0, lam=4.0, variant="vanilla"),
    "A-RelSAV": lambda p: AdaptiveSAV(p, lr=1.0, C=100.0, lam=4.0, variant="relax"),
    "AEGD": lambda p: AEGD(p, lr=0.1),
    "AEGDM": lambda p: AEGDM(p, lr=0.01, momentum=0.9),
}
TARGETED = ("SAV", "ExpSAV", "IEQAdaptive")
TARGET = 1.10
#: the methods whose target is Adam's step (issue): no slower than Adam; A-RelSAV evaluates the loss twice, as SAV relax
ADAM_TARGETED = ("A-SAV", "AEGD", "AEGDM")


def make_problem(shape: str, seed: int = 0) -> tuple[Tensor, Tensor, Callable, dict]:
    d, m, k, B, loss = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, d, generator=g)
    if loss == "mse":
        y = torch.randn(B, k, generator=g)
        loss_fn = torch.nn.functional.mse_loss
    else:
        y = torch.randint(0, k, (B,), generator=g)
        loss_fn = torch.nn.functional.cross_entropy
    torch.manual_seed(seed)
    state = TwoLayerNet(d, m, k).state_dict()
    return x, y, loss_fn, state


def make_stepper(shape: str, method: str, update_only: bool = False) -> Callable[[], Tensor]:
    d, m, k, _, _ = SHAPES[shape]
    x, y, loss_fn, state = make_problem(shape)
    net = TwoLayerNet(d, m, k)
    net.load_state_dict(state)
    opt = METHODS[method](net.parameters())

    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        return loss

    if update_only:  # gradients and loss computed once and kept: what remains is the optimizer's own work
        cached = closure().detach()
        return lambda: opt.step(lambda: cached)
    return lambda: opt.step(closure)


def bench(
    shape: str, methods: list[str], rounds: int, warmup: int, update_only: bool = False
) -> dict[str, list[float]]:
    steppers = {name: make_stepper(shape, name, update_only) for name in methods}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(warmup + rounds):
        shift = r % len(methods)
        for name in methods[shift:] + methods[:shift]:
            t0 = time.perf_counter()
            steppers[name]()
            t1 = time.perf_counter()
            if r >= warmup:
                times[name].append(t1 - t0)
    return times


def report(shape: str, times: dict[str, list[float]], what: str = "full step") -> bool:
    d, m, k, B, loss = SHAPES[shape]
    n = (d + 1) * m + m * k
    sgd = times["SGD"]
    print(f"\n{shape}: TwoLayerNet({d}, {m}, {k}), {n} parameters, B = {B}, {loss}, {len(sgd)} rounds, "
          f"{torch.get_num_threads()} threads, {what}")
    adam = times.get("Adam")
    print(f"  {'method':<14}{'median ms':>10}{'p10 ms':>9}{'p90 ms':>9}{'× SGD':>8}{'× Adam':>8}")
    ok = True
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        ratio = statistics.median(t / s for t, s in zip(ts, sgd))
        to_adam = statistics.median(t / a for t, a in zip(ts, adam)) if adam else float("nan")
        flag = ""
        if name in TARGETED and what.startswith("full"):
            flag = "  ok" if ratio <= TARGET else f"  > {TARGET:.2f}× SGD"
            ok &= ratio <= TARGET
        elif name in ADAM_TARGETED and adam and what.startswith("full"):
            flag = "  ok" if to_adam <= 1.0 else "  > Adam"
            ok &= to_adam <= 1.0
        print(f"  {name:<14}{1e3 * statistics.median(ts):>10.3f}{1e3 * q[0]:>9.3f}{1e3 * q[-1]:>9.3f}{ratio:>8.3f}"
              f"{to_adam:>8.3f}{flag}")
    return ok


def profile(shape: str, method: str, steps: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = make_stepper(shape, method)
    for _ in range(10):
        step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(f"\n{method} at {shape}, {steps} steps: self CPU time by operator")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per shape (default 200, --quick 40)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--update-only", action="store_true", help="time the update alone: the closure returns a loss "
                        "computed once, with the gradients kept from one backward pass (no forward/backward per step)")
    parser.add_argument("--profile", metavar="METHOD", default=None, help="profile one method (name as in the table, "
                        "case-insensitive) instead of timing")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (40 if args.quick else 200)
    if args.profile:
        names = {n.lower(): n for n in METHODS}
        for shape in args.shapes:
            profile(shape, names[args.profile.lower()], 20 if args.quick else 100)
        return
    methods = ["SGD"] + [m for m in args.methods if m != "SGD"]
    ok = True
    for shape in args.shapes:
        times = bench(shape, methods, rounds, warmup=max(5, rounds // 10), update_only=args.update_only)
        ok &= report(shape, times, "update only" if args.update_only else "full step (closure + update)")
    if not args.update_only:
        print(
            f"\ntargets: {', '.join(TARGETED)} within {TARGET:.2f}× of SGD; {', '.join(ADAM_TARGETED)} no slower than "
            "Adam: "
            f"{'met' if ok else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
