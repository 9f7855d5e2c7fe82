"""Step time of IEQ (full Jacobian): the naive dense step, the closed form, the generic path, and an SGD step.

    python scripts/bench_ieq.py            # full repetition counts
    python scripts/bench_ieq.py --quick    # fewer repetitions

One run measures all four side by side at each shape: repetitions are interleaved (one step of each method per round), so
that drift in the machine's load hits every method alike, and the median over rounds is reported, with the minimum beside
it (other processes on a shared machine inflate it less: on a throttled 2-core VM single steps stall by ~100 ms). The
targets are checked on the medians. float32, the default number of threads. The naive dense step (J from
``torch.autograd.functional.jacobian``, then ``torch.linalg.solve``) takes seconds at the MNIST shape, so it and the
generic step run in only a few rounds there (every round at exp1).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import functional_call

from gf_lightning.components.nets import TwoLayerNet
from gf_lightning.optim.ieq import IEQ

SHAPES = {  # name: (B, d, m, k)
    "exp1": (64, 40, 1000, 1),
    "mnist": (256, 784, 100, 10),
}


def make_problem(B: int, d: int, m: int, k: int, seed: int = 0) -> tuple[Tensor, Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, d, generator=g)
    if k == 1:
        y = torch.randn(B, 1, generator=g)
    else:
        y = torch.nn.functional.one_hot(torch.randint(0, k, (B,), generator=g), k).float()
    torch.manual_seed(seed)
    state = TwoLayerNet(d, m, k).state_dict()
    return x, y, state


def dense_step(net: TwoLayerNet, x: Tensor, y: Tensor, lr: float) -> None:
    """The naive step: materialise J with torch.autograd.functional.jacobian, solve densely, update."""
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach() for p in net.parameters())

    def residual(*ps: Tensor) -> Tensor:
        return (functional_call(net, dict(zip(names, ps)), (x,)) - y).reshape(-1)

    q = residual(*params)
    jac = torch.cat([j.reshape(q.numel(), -1) for j in torch.autograd.functional.jacobian(residual, params)], dim=1)
    system = torch.eye(q.numel(), dtype=q.dtype) + lr * jac @ jac.T
    q_new = torch.linalg.solve(system, q)
    step = jac.T @ q_new
    with torch.no_grad():
        col = 0
        for p in net.parameters():
            p.sub_(lr * step[col : col + p.numel()].view_as(p))
            col += p.numel()


def bench_shape(name: str, rounds: int, slow_rounds: int, lr: float = 0.1) -> dict[str, list[float]]:
    """Step times in ms of each method at one shape, one entry per round."""
    B, d, m, k = SHAPES[name]
    x, y, state = make_problem(B, d, m, k)
    nets = {}
    for key in ("dense", "closed", "generic", "sgd"):
        nets[key] = TwoLayerNet(d, m, k)
        nets[key].load_state_dict(state)
    ieq_closed = IEQ(nets["closed"].parameters(), lr=lr)
    ieq_generic = IEQ(nets["generic"].parameters(), lr=lr)
    sgd = torch.optim.SGD(nets["sgd"].parameters(), lr=lr)

    def closed() -> None:
        net = nets["closed"]

        def closure() -> Tensor:
            ieq_closed.zero_grad()
            return net(x) - y

        ieq_closed.step(closure, gram_fn=lambda: net.jacobian_gram(x))

    def generic() -> None:
        net = nets["generic"]

        def closure() -> Tensor:
            ieq_generic.zero_grad()
            return net(x) - y

        ieq_generic.step(closure)

    def sgd_step() -> None:
        sgd.zero_grad()
        torch.nn.functional.mse_loss(nets["sgd"](x), y).backward()
        sgd.step()

    methods: dict[str, Callable[[], None]] = {
        "dense": lambda: dense_step(nets["dense"], x, y, lr),
        "closed": closed,
        "generic": generic,
        "sgd": sgd_step,
    }
    slow = {"dense", "generic"} if name == "mnist" else set()  # steps of seconds: only a few rounds
    for key, fn in methods.items():  # warm-up, except for a step that takes seconds
        if not (key == "dense" and name == "mnist"):
            fn()
    times: dict[str, list[float]] = {key: [] for key in methods}
    for r in range(rounds):
        for key, fn in methods.items():
            if key in slow and r >= slow_rounds:
                continue
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {key: [1e3 * t for t in ts] for key, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (for a smoke run)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    rounds, slow_rounds = (11, 2) if args.quick else (51, 3)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32; step times in ms")
    results = {name: bench_shape(name, rounds, slow_rounds) for name in args.shapes}
    print(f"rounds: {rounds} (dense and generic at mnist: {slow_rounds}), interleaved")
    for label, stat in (("median", statistics.median), ("min (less sensitive to other load on the machine)", min)):
        print(f"\n{label}:")
        header = (
            f"{'shape':<6} {'B':>4} {'d':>4} {'m':>5} {'k':>3} | {'dense':>9} {'closed':>9} {'generic':>9} {'SGD':>7} | "
            f"{'dense/closed':>12} {'closed/SGD':>10}"
        )
        print(header)
        print("-" * len(header))
        for name, times in results.items():
            t = {key: stat(ts) for key, ts in times.items()}
            B, d, m, k = SHAPES[name]
            print(
                f"{name:<6} {B:>4} {d:>4} {m:>5} {k:>3} | {t['dense']:>9.2f} {t['closed']:>9.2f} {t['generic']:>9.2f} "
                f"{t['sgd']:>7.3f} | {t['dense'] / t['closed']:>11.1f}x {t['closed'] / t['sgd']:>9.2f}x"
            )

    targets = [  # (shape, ratio, bound, at least?)
        ("mnist", "dense/closed", 50.0, True),
        ("exp1", "dense/closed", 15.0, True),
        ("exp1", "closed/SGD", 3.0, False),
    ]
    print()
    for name, ratio, bound, at_least in targets:
        if name not in results:
            continue
        t = {key: statistics.median(ts) for key, ts in results[name].items()}
        value = t["dense"] / t["closed"] if ratio == "dense/closed" else t["closed"] / t["sgd"]
        ok = value >= bound if at_least else value <= bound
        verdict = "met" if ok else "NOT met"
        print(f"target {name} {ratio} {'>=' if at_least else '<='} {bound:g} (medians): {value:.2f}  {verdict}")


if __name__ == "__main__":
    main()
