"""Checkpoints that are never half-written, never hold NaN/Inf weights, and are refused when corrupted.

Every checkpoint the command line writes goes through :class:`SafeCheckpointIO` (installed by the CLI as the trainer's
``CheckpointIO`` plugin), which

- writes beside the target (``.<name>.<pid>.tmp`` in the same folder), flushes, ``fsync``\\ s and renames it over the
  target with ``os.replace`` (then ``fsync``\\ s the folder): a crash or a full disk at any moment leaves either the
  previous file or the new one, never a truncated or empty one, even when the output folder and ``$TMPDIR`` are on
  different filesystems;
- refuses to write a checkpoint whose weights or optimizer state hold NaN or Inf (the one exception:
  ``log r``/``log ‖q‖`` may be ``−∞``, the documented state of an auxiliary variable that has collapsed to 0);
- stores :func:`state_digest` (SHA-256 over every entry of the checkpoint) under :data:`DIGEST_KEY`, and checks it, the
  file's kind and its readability when a checkpoint is loaded (``--ckpt_path``, :func:`load_checkpoint`): a corrupted,
  truncated or empty file or a folder is refused with one line that names it; a checkpoint without the digest (plain
  Lightning's, or from before checksums) is loaded with a warning that its integrity could not be checked.

:class:`AtomicModelCheckpoint` makes ``checkpoint.save_last=link`` atomic as well (a hard link, or a copy, renamed into
place); :class:`~gf_lightning.nonfinite.NonFiniteGuard` stops the run, instead of saving bad weights, with the one
message that names the method, the epoch, the step and :func:`last_good_checkpoint`, the last checkpoint really written.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO

from .errors import CheckpointLoadError, CheckpointWriteError, GFConfigError, NonFiniteError
from .optim.expsav import ExpSAV
from .optim.ieq_adaptive import IEQAdaptive
from .optim.sav import SAV

#: the checkpoint entry that holds :func:`state_digest` of all the others
DIGEST_KEY = "gf_lightning_sha256"
#: optimizer-state entries that may be −∞ (and only −∞): the logarithm of an auxiliary variable that collapsed to 0
NEG_INF_ALLOWED = frozenset(cls.aux_key for cls in (SAV, ExpSAV, IEQAdaptive))


# ----------------------------------------------------------------------------------------------------------------------
# what a checkpoint holds: its digest, its non-finite entries
# ----------------------------------------------------------------------------------------------------------------------
def _feed(h, obj: Any) -> None:
    """Feed a canonical encoding of ``obj`` to the hash ``h``: tensors by dtype, shape and bytes, containers in
    order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(b"T" + f"{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        h.update(b"D" + struct.pack("<q", len(obj)))
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update((b"L" if isinstance(obj, list) else b"U") + struct.pack("<q", len(obj)))
        for value in obj:
            _feed(h, value)
    elif obj is None or isinstance(obj, (bool, int)):
        h.update(b"I" + repr(obj).encode())
    elif isinstance(obj, float):
        h.update(b"F" + obj.hex().encode())
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(b"S" + struct.pack("<q", len(data)) + data)
    elif isinstance(obj, bytes):
        h.update(b"B" + struct.pack("<q", len(obj)) + obj)
    elif isinstance(obj, type):
        h.update(b"C" + f"{obj.__module__}.{obj.__qualname__}".encode())
    else:
        h.update(b"O" + f"{type(obj).__module__}.{type(obj).__qualname__}".encode())
        h.update(pickle.dumps(obj, protocol=4))


def state_digest(checkpoint: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over every entry of ``checkpoint`` but :data:`DIGEST_KEY`: the same for the dict that was saved and
    the dict that ``torch.load`` gives back, different as soon as one byte of a tensor or one value changed."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in checkpoint.items() if k != DIGEST_KEY})
    return h.hexdigest()


def _nonfinite(value: Any, allow_neg_inf: bool) -> str | None:
    t = torch.as_tensor(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()) or torch.isfinite(t).all():
        return None
    if allow_neg_inf and not torch.isnan(t).any() and not (t == math.inf).any():
        return None  # only −∞
    return "NaN" if torch.isnan(t).any() else "Inf"


def nonfinite_entry(checkpoint: Mapping[str, Any]) -> str | None:
    """The first weight or optimizer-state entry of ``checkpoint`` that is NaN or Inf, described (``None`` when all are
    finite). ``log_r``/``log_q`` (:data:`NEG_INF_ALLOWED`) may be −∞."""
    for name, tensor in (checkpoint.get("state_dict") or {}).items():
        if (kind := _nonfinite(tensor, False)) is not None:
            return f"weight {name} is {kind}"
    for i, opt in enumerate(checkpoint.get("optimizer_states") or ()):
        for pid, state in (opt.get("state") or {}).items() if isinstance(opt, Mapping) else ():
            for key, value in state.items():
                if (kind := _nonfinite(value, key in NEG_INF_ALLOWED)) is not None:
                    return f"optimizer {i} state {key!r} of parameter {pid} is {kind}"
    return None


# ----------------------------------------------------------------------------------------------------------------------
# writing beside the target, loading with checks
# ----------------------------------------------------------------------------------------------------------------------
def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a folder that cannot be opened (some platforms): the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(target: Path) -> Path:
    """Where ``target`` is written before it is renamed into place: beside it, so that the rename never crosses a
    filesystem (``.<name>.<pid>.tmp``; a leftover one is what a crash mid-write leaves, never read)."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


@dataclass(frozen=True)
class Replacement:
    """What :func:`replace_atomically` did: the file written, and its size in bytes."""

    path: Path
    size: int


def replace_atomically(target, write) -> Replacement:
    """Write a new ``target``: ``write(f)`` fills a temporary file beside it, which is flushed, ``fsync``\\ ed and
    renamed over ``target``. On any failure the temporary file is removed, ``target`` is as it was, and the error is
    raised as :class:`CheckpointWriteError` (an ``OSError`` such as a full disk) or as itself."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, target)
    except BaseException as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(err, OSError):
            raise CheckpointWriteError(
                f"could not write checkpoint {target} ({err.strerror or err}); the previous {target.name}, if any, is "
                "unchanged"
            ) from err
        raise
    _fsync_folder(target.parent)
    return Replacement(target, size)


def load_checkpoint(path, map_location: Any = "cpu", weights_only: bool | None = False) -> dict[str, Any]:
    """Load the checkpoint at ``path`` after checking that it is a non-empty file that ``torch.load`` reads and whose
    :func:`state_digest` is the one stored when it was written; else :class:`CheckpointLoadError` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointLoadError(f"ckpt_path={path} is a folder; give a checkpoint file, e.g. {path}/last.ckpt")
    if not path.is_file():
        raise CheckpointLoadError(f"ckpt_path={path}: no such file; give an existing .ckpt file")
    if path.stat().st_size == 0:
        raise CheckpointLoadError(f"ckpt_path={path} is empty (0 bytes), not a checkpoint; give an intact .ckpt file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=bool(weights_only))
    except Exception as err:  # truncated zip, garbage, a pickle that does not load: one line, not a traceback
        why = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointLoadError(
            f"ckpt_path={path} cannot be read as a checkpoint (truncated, corrupted or another kind of file: {why}); "
            "give "
            "an intact .ckpt file"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointLoadError(
            f"ckpt_path={path} holds a {type(checkpoint).__name__}, not a checkpoint; give a .ckpt file"
        )
    if DIGEST_KEY not in checkpoint:  # plain Lightning's, or gf_lightning's before checksums: loaded, and said so
        warnings.warn(
            f"ckpt_path={path} has no {DIGEST_KEY} entry (written by plain Lightning or an earlier gf_lightning), "
            "so its integrity cannot be checked; loading it as it is",
            stacklevel=2,
        )
        return checkpoint
    if checkpoint[DIGEST_KEY] != state_digest(checkpoint):
        raise CheckpointLoadError(
            f"ckpt_path={path} is corrupted: its content does not match the SHA-256 stored when it was written; give "
            "an "
            "intact checkpoint (the epochNNNN.ckpt beside it, or an earlier run's)"
        )
    return checkpoint


#: ``--ckpt_path`` values that Lightning resolves itself to a file of the run
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def check_ckpt_path(ckpt_path: str | None) -> dict[str, Any] | None:
    """The checkpoint at ``--ckpt_path``, loaded with :func:`load_checkpoint`'s checks (a :class:`CheckpointLoadError`,
    one line, when it is not intact), before anything else reads it; ``None`` without a path, or for the names that
    Lightning resolves itself (``last``, ``best``, …)."""
    if ckpt_path and (str(ckpt_path) not in LIGHTNING_CKPT_NAMES or Path(ckpt_path).exists()):
        return load_checkpoint(ckpt_path)
    return None


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes atomically, refuses NaN/Inf, stores and checks :data:`DIGEST_KEY`.

    ``written`` lists the files this process wrote (oldest first, removed ones dropped); ``interrupted`` is set by
    :class:`~gf_lightning.nonfinite.NonFiniteGuard` while the trainer handles an exception, when a non-finite checkpoint
    is skipped instead of raising (an error there would hide the one being handled)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[str] = []
        self.interrupted = False

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        if (what := nonfinite_entry(checkpoint)) is not None:
            if self.interrupted:
                return  # the error being handled says what went wrong; the previous file stays
            raise NonFiniteError(
                f"refused to write checkpoint {path}: {what} (epoch {checkpoint.get('epoch')}, step "
                f"{checkpoint.get('global_step')}). Last good checkpoint: {self.last_written() or '(none saved yet)'}"
            )
        checkpoint = {**checkpoint, DIGEST_KEY: state_digest(checkpoint)}
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        try:
            written = replace_atomically(path, lambda f: self.write(f, data))
        except CheckpointWriteError as err:
            raise CheckpointWriteError(
                f"{err}. Last good checkpoint: {self.last_written() or '(none saved yet)'}"
            ) from None
        self.record(written.path)

    def write(self, f, data: memoryview) -> None:
        """Write the serialized checkpoint to the open temporary file (tests override it to die midway)."""
        f.write(data)

    def record(self, path) -> None:
        path = str(path)
        if path in self.written:
            self.written.remove(path)
        self.written.append(path)

    def last_written(self) -> str | None:
        """The newest file this process wrote that is still there."""
        for path in reversed(self.written):
            if os.path.isfile(path):
                return path
        return None

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu", weights_only=bool(weights_only))

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        if str(path) in self.written:
            self.written.remove(str(path))


def with_safe_checkpoint_io(plugins: Any) -> list:
    """The trainer's ``plugins`` with a :class:`SafeCheckpointIO` (the given one, if it is a subclass); any other
    ``CheckpointIO`` is refused, since it would write without the atomic rename, the checks and the digest."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    ios = [p for p in plugins if isinstance(p, CheckpointIO)]
    for p in ios:
        if not isinstance(p, SafeCheckpointIO):
            raise GFConfigError(
                f"trainer.plugins: {type(p).__name__} would write checkpoints without the atomic rename, the NaN/Inf "
                "check "
                "and the checksum; allowed: gf_lightning.checkpointing.SafeCheckpointIO or a subclass of it (the "
                "default)"
            )
    return plugins if ios else [*plugins, SafeCheckpointIO()]


def safe_checkpoint_io(trainer: L.Trainer) -> SafeCheckpointIO | None:
    """The trainer's :class:`SafeCheckpointIO`, if it writes through one."""
    io_ = getattr(trainer.strategy, "checkpoint_io", None)
    return io_ if isinstance(io_, SafeCheckpointIO) else None


def last_good_checkpoint(trainer: L.Trainer | None) -> str | None:
    """The checkpoint file that this run last wrote and that is still there (every file the CLI writes is finite and
    complete); on a rank that writes nothing, the checkpoint callback's ``last.ckpt`` if it exists. ``None``: none
    yet."""
    if trainer is None:
        return None
    safe = safe_checkpoint_io(trainer)
    if safe is not None and (path := safe.last_written()):
        return path
    if trainer.is_global_zero and safe is not None:
        return None
    path = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
    return path if path and os.path.isfile(path) else None


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``save_last="link"`` puts ``last.ckpt`` in place atomically: a hard link to the newest
    checkpoint (a copy where the filesystem has none) made beside it and renamed over it. Lightning's own removes
    ``last.ckpt`` and then links it, as a symbolic link that dangles once the epoch file it names is removed."""

    @staticmethod
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            target, source = Path(linkpath), Path(filepath)
            if target.is_dir() and not target.is_symlink():
                raise CheckpointWriteError(f"cannot write {target}: it is a folder")
            tmp = temp_path(target)
            try:
                tmp.unlink(missing_ok=True)
                os.link(source, tmp)
                os.replace(tmp, target)
                _fsync_folder(target.parent)
            except OSError:
                tmp.unlink(missing_ok=True)
                data = source.read_bytes()
                replace_atomically(target, lambda f: f.write(data))
            if (safe := safe_checkpoint_io(trainer)) is not None:
                safe.record(target)
        trainer.strategy.barrier()
