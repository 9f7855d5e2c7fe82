"""Per-step cost of the project's Lightning fit next to a hand-written PyTorch loop doing the same work.

    python scripts/bench_loop.py                       # exp1 and MNIST shapes, every method
    python scripts/bench_loop.py --shapes exp1 --methods sgd sav --epochs 41
    python scripts/bench_loop.py --threads 1           # steadier on a busy machine
    python scripts/bench_loop.py --steps-per-call 1    # one mini-batch per training_step call

Both sides build the same thing from the same config (``configs/exp1_<method>.yaml`` or ``exp4_<method>.yaml`` with the
batch size set to 256): the same network and initial weights, the same in-memory data and batch order, the same
optimizer with the same settings, the same closure. The hand loop is what a user would write in plain PyTorch: iterate
the batches, call ``opt.step(closure)``. The Lightning side is ``python -m gf_lightning fit`` as a user runs it
(TensorBoard logging, progress bar, checkpoints, the config's ``data.steps_per_call``), driven in-process through
``cli_main``.

Side by side: one Lightning fit per method, and at the start of each of its epochs one epoch of the hand loop, so that
the two are timed within moments of each other and a slow spell of this shared machine hits both. What is timed: the
training steps of each epoch after the first — from the first batch's start to the last batch's end, so start-up,
validation and checkpoint writing are excluded on both sides. The table gives the median ms per optimizer step of each
side, the median of the per-epoch ratios Lightning / hand, and the ratio of the fastest epochs (background load only
ever adds time).

Target (issue 8): ratio ≤ 1.25 for every method at the exp1 shape (B = 256).
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


class HandLoop:
    """The run of ``cli`` written by hand: a copy of its network and optimizer, its data and batch order, a plain
    loop."""

    def __init__(self, cli, classify: bool) -> None:
        dm = cli.datamodule
        dm.setup("fit")
        t = dm.tensors
        self.net = copy.deepcopy(cli.model.net)
        self.opt = cli.model.optimizer(self.net.parameters())
        self.classify = classify
        self.residual = getattr(type(self.opt), "closure_returns", "loss") == "residual"
        self.loader = TensorBatches(t["x_train"], t["y_train"], BATCH, shuffle=True, seed=dm.seed)

    def epoch(self, epoch: int) -> float:
        """One epoch; seconds per optimizer step."""
        net, opt, loss_fn = self.net, self.opt, F.cross_entropy if self.classify else F.mse_loss
        self.loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        for x, y in self.loader:
            if self.residual:
                target = F.one_hot(y, net.k).to(x.dtype) if self.classify else y

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
        return (time.perf_counter() - start) / len(self.loader)


class SideBySide(L.Callback):
    """Times each Lightning epoch's training steps, and runs one hand-loop epoch just before each."""

    def __init__(self, hand: HandLoop) -> None:
        self.hand = hand
        self.hand_times: list[float] = []
        self.lightning_times: list[float] = []
        self._start, self._steps = 0.0, 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        with torch.enable_grad():
            self.hand_times.append(self.hand.epoch(trainer.current_epoch))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._start, self._steps = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            steps = trainer.global_step - self._steps  # optimizer steps: a call may take several
            self.lightning_times.append((time.perf_counter() - self._start) / steps)


STEPS_PER_CALL: int | None = None  # --steps-per-call: the data module's steps_per_call (default: the config's)


def build(shape: str, method: str, epochs: int, root: Path):
    args = [
        "--config",
        str(ROOT / "configs" / SHAPES[shape].format(method)),
        f"--trainer.max_epochs={epochs}",
        f"--trainer.default_root_dir={root}",
        f"--data.init_args.batch_size={BATCH}",
        "--trainer.enable_model_summary=false",
    ]
    if STEPS_PER_CALL is not None:
        args.append(f"--data.init_args.steps_per_call={STEPS_PER_CALL}")
    if shape == "mnist":
        data = ROOT.parent / "shared" / "data"
        args.append(f"--data.init_args.data_dir={data if data.is_dir() else 'data'}")
    return cli_main(args, run=False)


def side_by_side(shape: str, method: str, epochs: int) -> tuple[list[float], list[float]]:
    """Seconds per optimizer step of each epoch after the first: (hand, Lightning), paired by epoch."""
    with tempfile.TemporaryDirectory() as root:
        hand = HandLoop(build(shape, method, epochs, Path(root) / "hand"), classify=shape == "mnist")
        cli = build(shape, method, epochs, Path(root))
        timer = SideBySide(hand)
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.hand_times[1:], timer.lightning_times[1:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--epochs", type=int, default=31, help="epochs per fit (the first is not timed)")
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

    print(f"torch {torch.__version__}, lightning {L.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, "
          f"{args.epochs - 1} timed epoch pairs, steps per Lightning call: {args.steps_per_call or 'the config’s'}")
    for shape in args.shapes:
        print(
            f"\n{shape}:\n  {'method':<14}{'hand ms':>9}{'lightning ms':>14}{'ratio':>8}   {'fastest epochs ratio':>20}"
        )
        for method in args.methods:
            hand, light = side_by_side(shape, method, args.epochs)
            ratio = statistics.median(lt / h for h, lt in zip(hand, light))
            h, lt = statistics.median(hand) * 1e3, statistics.median(light) * 1e3
            flag = "" if shape != "exp1" or ratio <= 1.25 else "  > 1.25"
            print(f"  {method:<14}{h:9.3f}{lt:14.3f}{ratio:8.3f}   {min(light) / min(hand):20.3f}{flag}", flush=True)


if __name__ == "__main__":
    main()
