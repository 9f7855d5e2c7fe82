"""What the test files share (``from support import …``): the repository's paths, the method list, the arguments of
a small run, runs on several ranks, subprocess environments, and where the MNIST files are.

Every path here is absolute (from this file), so the suite runs from any working directory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: the repository root
ROOT = Path(__file__).resolve().parents[1]
#: the experiment configs
CONFIGS = ROOT / "configs"
#: the folder of this file: ``helpers`` (the test callbacks) imports from here, in subprocesses too (``PYTHONPATH``)
TESTS = Path(__file__).resolve().parent
#: the MNIST files beside the checkout (``../shared/data/MNIST/raw``), where this project's machines keep them
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
#: every method as the configs name it (``configs/exp{1,2,3,4}_<method>.yaml``)
METHODS = ["sgd", "adam", "sav", "expsav", "ieq", "ieq_adaptive"]
#: the four uncompressed IDX files that ``data_dir/MNIST/raw/`` must hold
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: the arguments that keep a test run quiet (no progress bar, no model summary)
QUIET = ["--progress_bar.refresh_rate=0", "--trainer.enable_model_summary=false"]
#: exp1 shrunk so that an epoch takes a few steps: 640 samples (512 to train), 64 hidden units, a log line every step
SMALL_EXP1 = ["--data.init_args.n_samples=640", "--model.net.init_args.m=64", *QUIET, "--trainer.log_every_n_steps=1"]
#: two forked CPU processes (gloo): ~2 s a run here, against ~13 s for ddp_spawn, whose children import torch again
DDP_FORK = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_fork"]


def cli_args(config: str | Path, root: Path, *extra: str, subcommand: str | None = "fit",
             epochs: int | None = None) -> list[str]:
    """The command line of a quiet run of ``config`` (a name under ``configs/``, with or without ``.yaml``, or a path)
    that logs under ``root``: ``subcommand`` first (none: a parse for ``cli_main(…, run=False)``), ``epochs`` as
    ``--trainer.max_epochs``, ``extra`` last (it wins)."""
    path = Path(config)
    if not path.is_absolute():
        path = CONFIGS / (config if str(config).endswith(".yaml") else f"{config}.yaml")
    return [*([subcommand] if subcommand else []), "--config", str(path), f"--trainer.default_root_dir={root}", *QUIET,
            *([f"--trainer.max_epochs={epochs}"] if epochs is not None else []), *extra]


def version_dirs(root) -> list[Path]:
    """Every run folder under ``root`` (``lightning_logs/<experiment>/<run>/version_N``), oldest run first."""
    dirs = Path(root).glob("lightning_logs/*/*/version_*")
    return sorted(dirs, key=lambda d: (d.stat().st_mtime_ns, int(d.name.removeprefix("version_"))))


def run_dir(root) -> Path:
    """The one run folder under ``root``."""
    (folder,) = version_dirs(root)
    return folder


def on_ranks(job: Callable[[int, int], Any], folder: Path, world: int = 2, start_method: str = "fork") -> list[Any]:
    """``job(rank, world)`` in ``world`` processes joined in one gloo group (a file rendezvous in ``folder``), and what
    each returned, in rank order. Forked by default: ~1 s against ~15 s for spawned children, which import torch again;
    but a job that calls LAPACK (a Cholesky) must be spawned, as LAPACK's threads do not survive a fork (it hangs)."""
    import torch.multiprocessing

    torch.multiprocessing.start_processes(_rank_main, args=(world, job, str(folder)), nprocs=world, join=True,
                                          start_method=start_method)
    return [torch.load(Path(folder) / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


def _rank_main(rank: int, world: int, job: Callable[[int, int], Any], folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world)
    try:
        torch.save(job(rank, world), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_quadratic(cls: type, problem: tuple, lrs: tuple, steps: int, shifts=None, **kw) -> tuple[list[dict], int]:
    """A test file's quadratic ``L(w) = ½ wᵀPw + qᵀw + 1 + shiftₙ`` (``problem = (P, Q, W0)``, ``W0`` the two groups'
    start) through the optimizer ``cls`` in float64: one group per entry of ``lrs`` (one group when ``lrs`` has one
    entry). Records, after each step, the weights, each parameter's state and the global state (lists and clones), the
    stats (0-dim tensors); and the closure calls."""
    P, Q, W0 = problem
    u, v = (torch.nn.Parameter(torch.tensor(w, dtype=torch.float64)) for w in W0)
    groups = [{"params": [u, v]}] if len(lrs) == 1 else [{"params": [u], "lr": lrs[0]}, {"params": [v], "lr": lrs[1]}]
    opt = cls(groups, lr=lrs[0], **kw)
    Pt, Qt = torch.tensor(P, dtype=torch.float64), torch.tensor(Q, dtype=torch.float64)
    calls, shift = [0], [0.0]

    def closure():
        calls[0] += 1
        opt.zero_grad()
        x = torch.cat([u, v])
        loss = 0.5 * x @ Pt @ x + Qt @ x + 1.0 + shift[0]
        loss.backward()
        return loss

    out = []
    for n in range(steps):
        shift[0] = shifts[n] if shifts else 0.0
        opt.step(closure)
        out.append(dict(w=[u.tolist(), v.tolist()],
                        param_state=[{k: t.tolist() for k, t in opt.state[p].items()} for p in (u, v)],
                        state={k: t.clone() for k, t in opt.global_state.items()},
                        stats={k: t.clone() for k, t in opt.stats.items()}))
    return out, calls[0]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m gf_lightning`` subprocess that may name ``helpers.…`` callbacks."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


# ----------------------------------------------------------------------------------------------------------------------
# MNIST: the shared files, else a cached download, else a skip that says why
# ----------------------------------------------------------------------------------------------------------------------
#: where a clone without ``../shared/data`` keeps a downloaded copy (``GF_LIGHTNING_DATA`` moves it)
MNIST_CACHE = Path(
    os.environ.get("GF_LIGHTNING_DATA")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gf_lightning" / "data"
)
#: the first mirror torchvision tries; if it cannot be reached within a few seconds, no download is attempted
MNIST_HOST = ("ossci-datasets.s3.amazonaws.com", 443)


def has_mnist(data_dir: Path) -> bool:
    return all((data_dir / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES)


def _reachable(host: tuple[str, int], timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (name look-up included, which has no
    timeout
    of its own: it runs in a daemon thread that is abandoned when it takes too long)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(host, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def _download_mnist(cache: Path, timeout: float = 300.0) -> str | None:
    """Download the MNIST files into ``cache`` with torchvision; ``None`` on success, else why not. The download runs in
    a subprocess with a time limit, into a scratch folder that is renamed into place only when all four files are there,
    so a stalled or interrupted download leaves nothing half-written behind."""
    if os.environ.get("GF_LIGHTNING_NO_DOWNLOAD"):
        return "GF_LIGHTNING_NO_DOWNLOAD is set"
    if not _reachable(MNIST_HOST):
        return f"no connection to {MNIST_HOST[0]} (offline?)"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        scratch = Path(cache) / f".download-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
    except OSError as err:
        return f"cannot write to the cache folder {cache} ({err})"
    code = (f"from torchvision.datasets import MNIST\nfor train in (True, False): MNIST({str(scratch)!r}, train=train, "
            "download=True)")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not has_mnist(scratch):
            return f"the download failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
        target = cache / "MNIST"
        if not has_mnist(cache):
            shutil.rmtree(target, ignore_errors=True)
            (scratch / "MNIST").rename(target)
        return None
    except subprocess.TimeoutExpired:
        return f"the download took more than {timeout:.0f} s"
    except OSError as err:
        return f"cannot write to the cache folder {cache} ({err})"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def find_mnist() -> tuple[Path | None, str]:
    """The folder that holds ``MNIST/raw/`` (the shared files, else the cache, filled by a download where one is
    possible), or ``None`` and the reason there is none."""
    for folder in (SHARED_DATA, MNIST_CACHE):
        if has_mnist(folder):
            return folder, ""
    why = _download_mnist(MNIST_CACHE)
    if why is None and has_mnist(MNIST_CACHE):
        return MNIST_CACHE, ""
    return None, (
        f"MNIST files not found in {SHARED_DATA / 'MNIST' / 'raw'} nor in {MNIST_CACHE / 'MNIST' / 'raw'}, and "
        f"not downloaded: {why}. Put the four IDX files ({', '.join(MNIST_FILES)}) in one of them, or set "
        "GF_LIGHTNING_DATA to a folder that holds MNIST/raw/"
    )
