"""The exceptions the project raises on purpose; the command line prints them as one line, without a traceback."""


class GFConfigError(ValueError):
    """A setting is out of its allowed range, or two settings disagree. The message names the setting and what is allowed."""


class GFStepError(RuntimeError):
    """An optimizer step could not be taken as asked (no closure, a closure that returned no loss, ``L + C ≤ 0``)."""


class NonFiniteError(RuntimeError):
    """The loss or the parameters became NaN or Inf; training stopped before a bad checkpoint could be written."""
