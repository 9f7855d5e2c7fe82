"""Callbacks the tests add to runs from the command line (``--trainer.callbacks+=helpers.KillAtEpoch``), readers of what
a run wrote, and what the tests that signal real runs and sweeps need to find and wait for processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from gf_lightning.components import TwoLayerNet


def callback_arg(name: str, **init_args) -> str:
    """The command-line argument that adds callback ``name`` of this file: ``--trainer.callbacks+={"class_path":
    …}``."""
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"helpers.{name}", "init_args": init_args})


class KillAtEpoch(L.Callback):
    """SIGKILL this process when epoch ``epoch`` starts: epochs ``0 … epoch-1`` are done and checkpointed."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class KillAfterBatch(L.Callback):
    """SIGKILL this process after ``training_step`` call ``batch`` of epoch ``epoch``: in the middle of the epoch (when
    an epoch has several calls, e.g. with ``data.steps_per_call=1``), after the last end-of-epoch checkpoint."""

    def __init__(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordTraining(L.Callback):
    """Write down what this process trained: before every ``training_step`` call, one line per mini-batch of the call,
    to ``<folder>/rank<R>.txt`` (appended and closed at once, so the lines outlive a SIGKILL). Read it with
    :func:`read_record`.

    A line holds the process id, the world size, the epoch, the call's ``batch_idx``, the optimizer step the mini-batch
    is taken at (``global_step`` at the call, plus its place in the call) and a fingerprint of every input row of the
    mini-batch (a hash of its bytes): which samples this rank saw, in which order."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        minibatches = batch if isinstance(batch, list) else [batch]
        lines = []
        for j, (x, _) in enumerate(minibatches):
            rows = x.detach().cpu().contiguous()
            hashes = [hashlib.blake2b(row.numpy().tobytes(), digest_size=8).hexdigest() for row in rows]
            lines.append(f"{os.getpid()} {trainer.world_size} {trainer.current_epoch} {batch_idx} "
                         f"{trainer.global_step + j} {','.join(hashes)}\n")
        path = Path(self.folder) / f"rank{trainer.global_rank}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write("".join(lines))


@dataclass(frozen=True)
class Step:
    """One mini-batch as :class:`RecordTraining` wrote it down."""

    pid: int
    world_size: int
    epoch: int
    call: int
    step: int
    rows: tuple[str, ...]


def read_record(folder) -> dict[int, list[Step]]:
    """``rank → [Step, …]`` in the order trained, from the files :class:`RecordTraining` wrote under ``folder``."""
    out = {}
    for path in sorted(Path(folder).glob("rank*.txt")):
        steps = []
        for line in path.read_text().splitlines():
            pid, world, epoch, call, step, rows = line.split(" ")
            rows = tuple(rows.split(",")) if rows else ()  # a rank may hold no sample of a last batch
            steps.append(Step(int(pid), int(world), int(epoch), int(call), int(step), rows))
        out[int(path.stem.removeprefix("rank"))] = steps
    return out


class PerturbOnRank(L.Callback):
    """Make the replicas diverge: after the first ``training_step`` call of epoch ``epoch``, add ``delta`` to one weight
    on rank ``rank`` only (DDP never re-broadcasts the parameters, so the difference stays)."""

    def __init__(self, rank: int = 1, epoch: int = 0, delta: float = 1e-3) -> None:
        self.rank, self.epoch, self.delta = rank, epoch, delta

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.current_epoch == self.epoch and batch_idx == 0:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] += self.delta


class TwoLayerNetWithoutGram(TwoLayerNet):
    """:class:`TwoLayerNet` without its closed-form ``jacobian_gram``: IEQ then takes its generic path (``J D Jᵀ`` from
    the residual's graph), as for any other ``nn.Module``."""

    jacobian_gram = None


class PoisonAtEpoch(L.Callback):
    """Push the run to NaN: set one weight to NaN in the middle of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


# ----------------------------------------------------------------------------------------------------------------------
# checkpoint crashes (tests/test_checkpoints.py)
# ----------------------------------------------------------------------------------------------------------------------
from gf_lightning.checkpointing import SafeCheckpointIO  # noqa: E402


class _AimedWrite(SafeCheckpointIO):
    """The CLI's checkpoint writer, with :meth:`aimed` true during the ``nth`` write of a file called ``name``."""

    def __init__(self, name: str = "last.ckpt", nth: int = 2) -> None:
        super().__init__()
        self.name, self.nth, self.count, self.target = name, nth, 0, ""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self.target = Path(path).name
        super().save_checkpoint(checkpoint, path, storage_options)

    def aimed(self) -> bool:
        """Count a write of ``name``; whether it is the ``nth``."""
        if self.target != self.name:
            return False
        self.count += 1
        return self.count == self.nth


class KillMidCheckpointWrite(_AimedWrite):
    """The ``nth`` write of a file called ``name`` stops half-way: half the bytes written and ``fsync``\\ ed, then
    SIGKILL (``--trainer.plugins={"class_path": "helpers.KillMidCheckpointWrite", …}``)."""

    def write(self, f, data) -> None:
        if self.aimed():
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        f.write(data)


class FullDiskOnWrite(_AimedWrite):
    """The disk is full during the ``nth`` write of a file called ``name``: for that write no file of this process may
    grow past ``room`` more bytes (``RLIMIT_FSIZE``, no privileges needed, with ``SIGXFSZ`` ignored, so that the write
    raises ``OSError`` EFBIG as on a full disk); the limit is lifted afterwards."""

    def __init__(self, name: str = "last.ckpt", nth: int = 2, room: int = 4096) -> None:
        super().__init__(name, nth)
        self.room = room

    def write(self, f, data) -> None:
        if not self.aimed():
            f.write(data)
            return
        import resource

        limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (f.tell() + self.room, limits[1]))
        try:
            f.write(data)
            f.flush()
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, handler)


class PoisonBeforeSave(L.pytorch.callbacks.Checkpoint):
    """Set one weight to ``value`` (+Inf) in epoch ``epoch`` right before ``ModelCheckpoint`` saves: after the first
    ``training_step`` call (``when="batch"``, before a step checkpoint) or at the end of the epoch (``when="epoch"``,
    after the module's own check). A ``Checkpoint`` subclass, so that Lightning runs its hooks just before the
    ``ModelCheckpoint`` the CLI adds."""

    def __init__(self, epoch: int, when: str = "batch", value: float = float("inf")) -> None:
        self.epoch, self.when, self.value = epoch, when, value

    def _poison(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = self.value

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.when == "batch" and batch_idx == 0:
            self._poison(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.when == "epoch":
            self._poison(trainer, pl_module)


class CollapseAuxiliary(L.Callback):
    """Set the optimizer's ``log r`` / ``log ‖q‖`` to −∞ after every ``training_step`` call: the documented state of an
    auxiliary variable that has collapsed to 0 (the optimizer then takes zero steps), which a checkpoint must keep."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        opt = pl_module.optimizers(use_pl_optimizer=False)
        for state in opt.state.values():
            for key in ("log_r", "log_q"):
                if key in state:
                    state[key].fill_(float("-inf"))


@dataclass(frozen=True)
class HParamsTab:
    """What TensorBoard's HParams tab shows when it opens on a logdir."""

    hparams: list[str]  #: the hyperparameter columns ticked
    metrics: list[str]  #: the metric columns ticked
    rows: int  #: the session groups (table rows)


def hparams_tab_columns(logdir) -> HParamsTab:
    """Ask TensorBoard's own HParams backend (the ``/experiment`` and ``/session_groups`` routes the browser calls)
    about ``logdir``, and apply its frontend's rule (TensorBoard 2.21, ``tf-hparams-query-pane``): hyperparameters
    sorted with those marked ``differs`` first, the first five ticked; the first five metrics ticked."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from werkzeug.test import Client

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    context = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux,
                                    data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)))
    apps = hparams_plugin.HParamsPlugin(context).get_plugin_apps()

    def post(route: str, body: dict) -> dict:
        reply = Client(apps[route]).post(route, data=json.dumps(body), content_type="application/json")
        assert reply.status_code == 200, reply.get_data()
        return json.loads(reply.get_data())

    experiment = post("/experiment", {"experimentName": "", "hparamsLimit": 1000})
    # stable, as the frontend
    infos = sorted(experiment["hparamInfos"], key=lambda info: not info.get("differs", False))
    groups = post("/session_groups", {"experimentName": "", "startIndex": 0, "sliceSize": 1000,
                                      "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                          "STATUS_RUNNING"],
                                      "colParams": [{"hparam": info["name"]} for info in infos]})
    return HParamsTab([info["name"] for info in infos[:5]],
                      [m["name"]["tag"] for m in experiment["metricInfos"][:5]], int(groups.get("totalSize", 0)))


# -- processes: the tests that signal real runs and sweeps -------------------------------------------------------------
def as_foreground_job() -> None:
    """``preexec_fn`` of a process that a test stops by Ctrl-C: SIGINT (and SIGQUIT) back to their defaults, as a
    terminal's foreground job has them. A shell starts a background job without job control (``cmd &`` in a script,
    ``(cmd &)``) with both ignored, and a process inherits that: the suite launched so would see every child ignore its
    Ctrl-C (Python installs no KeyboardInterrupt handler over an inherited SIG_IGN)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def wait_until(condition, timeout_s: float, what: str, every_s: float = 0.05):
    """``condition()``'s first true value, polled every ``every_s`` seconds; an AssertionError naming ``what`` after
    ``timeout_s`` seconds."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        if value := condition():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of process ``pid`` from ``/proc``; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def children(pid: int) -> dict[int, list[bytes]]:
    """The running processes whose parent is ``pid``, with their command lines (``argv``)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[1] == pid and running(int(entry.name)):
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
    return dict(sorted(out.items()))


def fit_children(pid: int) -> list[int]:
    """The running ``python -m gf_lightning fit`` processes whose parent is ``pid``."""
    return [child for child, argv in children(pid).items() if b"gf_lightning" in argv and b"fit" in argv]


def kill_all(pids) -> None:
    """SIGKILL each process of ``pids`` that still runs (a test's clean-up)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
