"""Per-step cost of the project's Lightning fit next to a hand-written PyTorch loop doing the same work.

    python scripts/bench_loop.py                       # exp1 and MNIST shapes, every method, 3 rounds
    python scripts/bench_loop.py --shapes exp1 --methods sgd sav --rounds 5
    python scripts/bench_loop.py --threads 1           # steadier on a busy machine

Both sides build the same thing from the same config (``configs/exp1_<method>.yaml`` or ``exp4_<method>.yaml`` with the batch
size set to 256): the same network and initial weights, the same in-memory data and batch order, the same optimizer with the
same settings, the same closure. The hand loop is what a user would write in plain PyTorch: iterate the batches, call
``opt.step(closure)``. The Lightning side is ``python -m gf_lightning fit`` as a user runs it (TensorBoard logging, progress
bar, checkpoints), driven in-process through ``cli_main``.

``--steps-per-call K`` hands K mini-batches to each ``training_step`` call (the data modules' ``steps_per_call``): the same
steps in the same order, with Lightning's per-call cost paid once per K steps.

What is timed: the training steps of steady epochs only — from the first batch's start to the last batch's end of each epoch
after the first, so start-up, validation and checkpoint writing are excluded on both sides. The two sides alternate within
one process (round robin, ``--rounds`` times), and the table gives the median ms per optimizer step and the ratio Lightning /
hand, and beside them the fastest epoch of each side (background load only adds time, so that ratio is the steadier one).

Target (issue): ratio ≤ 1.25 for every method at the exp1 shape (B = 256).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from gf_lightning.cli import cli_main
from gf_lightning.data import TensorBatches

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"exp1": "exp1_{}.yaml", "mnist": "exp4_{}.yaml"}
METHODS = ["sgd", "sav", "expsav", "ieq_adaptive", "ieq"]
BATCH = 256


class StepTimer(L.Callback):
    """Wall time of each epoch's training steps (first batch start → last batch end)."""

    def __init__(self) -> None:
        self.per_step: list[float] = []
        self._start, self._steps = 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._start, self._steps = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == trainer.num_training_batches - 1 and trainer.current_epoch > 0:
            steps = trainer.global_step - self._steps  # optimizer steps: a call may take several
            self.per_step.append((time.perf_counter() - self._start) / steps)


STEPS_PER_CALL: int | None = None  # --steps-per-call: the data module's steps_per_call (default: the config's)


def build(shape: str, method: str, epochs: int, root: Path):
    args = ["--config", str(ROOT / "configs" / SHAPES[shape].format(method)), f"--trainer.max_epochs={epochs}",
            f"--trainer.default_root_dir={root}", f"--data.init_args.batch_size={BATCH}", "--trainer.enable_model_summary=false"]
    if STEPS_PER_CALL is not None:
        args.append(f"--data.init_args.steps_per_call={STEPS_PER_CALL}")
    if shape == "mnist":
        data = ROOT.parent / "shared" / "data"
        args.append(f"--data.init_args.data_dir={data if data.is_dir() else 'data'}")
    return cli_main(args, run=False)


def lightning_epochs(shape: str, method: str, epochs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as root:
        cli = build(shape, method, epochs, Path(root))
        timer = StepTimer()
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.per_step


def hand_epochs(shape: str, method: str, epochs: int) -> list[float]:
    """The same run written by hand: the model, data, optimizer and closure of the Lightning run, and a plain loop."""
    with tempfile.TemporaryDirectory() as root:
        cli = build(shape, method, epochs, Path(root))
    dm = cli.datamodule
    dm.setup("fit")
    t = dm.tensors
    net = copy.deepcopy(cli.model.net)
    opt = cli.model.optimizer(net.parameters())
    classify = shape == "mnist"
    loss_fn = F.cross_entropy if classify else F.mse_loss
    residual = getattr(type(opt), "closure_returns", "loss") == "residual"
    loader = TensorBatches(t["x_train"], t["y_train"], BATCH, shuffle=True, seed=dm.seed)
    per_step = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        for x, y in loader:
            if residual:
                target = F.one_hot(y, net.k).to(x.dtype) if classify else y

                def closure():
                    opt.zero_grad()
                    return net(x) - target

                opt.step(closure, gram_fn=lambda: net.jacobian_gram(x))
            else:

                def closure():
                    opt.zero_grad()
                    loss = loss_fn(net(x), y)
                    loss.backward()
                    return loss

                opt.step(closure)
        if epoch > 0:
            per_step.append((time.perf_counter() - start) / len(loader))
    return per_step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of hand loop and Lightning fit")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is not timed)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--steps-per-call", type=int, default=None,
                        help="mini-batches per training_step call on the Lightning side (default: the config's)")
    args = parser.parse_args(argv)
    global STEPS_PER_CALL
    STEPS_PER_CALL = args.steps_per_call
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, {args.rounds} rounds × "
          f"{args.epochs - 1} timed epochs per side, steps per Lightning call: {args.steps_per_call or 'the config'}s")
    for shape in args.shapes:
        print(f"\n{shape}:\n  {'method':<14}{'hand ms':>9}{'lightning ms':>14}{'ratio':>8}   "
              f"{'best hand':>9}{'best lightning':>15}{'ratio':>7}")
        for method in args.methods:
            hand, light = [], []
            for _ in range(args.rounds):
                hand += hand_epochs(shape, method, args.epochs)
                light += lightning_epochs(shape, method, args.epochs)
            h, lt = statistics.median(hand) * 1e3, statistics.median(light) * 1e3
            hb, lb = min(hand) * 1e3, min(light) * 1e3  # background load only ever adds time
            flag = "" if shape != "exp1" or lt / h <= 1.25 else "  > 1.25"
            print(f"  {method:<14}{h:9.3f}{lt:14.3f}{lt / h:8.3f}   {hb:9.3f}{lb:15.3f}{lb / hb:7.3f}{flag}", flush=True)


if __name__ == "__main__":
    main()
