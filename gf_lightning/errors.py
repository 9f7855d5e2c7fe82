"""The exceptions the project raises on purpose; the command line prints them as one line, without a traceback."""


class GFConfigError(ValueError):
    """A setting is out of its allowed range, or two settings disagree. The message names the setting and what is
    allowed."""


class GFStepError(RuntimeError):
    """An optimizer step could not be taken as asked (no closure, a closure that returned no loss, ``L + C ≤ 0``)."""


class NonFiniteError(RuntimeError):
    """The loss or the parameters became NaN or Inf; training stopped before a bad checkpoint could be written."""


class CheckpointLoadError(GFConfigError):
    """A checkpoint given to load (``--ckpt_path``) is not an intact checkpoint: a folder, an empty or truncated file,
    or a file whose content does not match the checksum stored when it was written. The message names the file and
    why."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, no permission); the previous file of that name is unchanged."""
