"""The errors a user can act on: bad configuration, bad input, incompatible files.

Everything the processor raises on purpose derives from :class:`SxdmError`, so callers can
tell "you asked for something impossible" from a bug.
"""


class SxdmError(Exception):
    """Base class of every error sxdm-stream raises on purpose."""


class ConfigError(SxdmError, ValueError):
    """A configuration value is missing, of the wrong type or out of its allowed range."""


class HistogramBudgetError(ConfigError):
    """The q-space histogram requested for the scan does not fit its memory budget."""


class BadFrameError(SxdmError, ValueError):
    """A frame cannot be accumulated (wrong shape, unknown index, invalid monitor...).

    ``reason`` is a short stable key under which the processor counts such frames.
    """

    def __init__(self, message: str, reason: str = "bad_frame") -> None:
        super().__init__(message)
        self.reason = reason


class IncompatibleFileError(SxdmError):
    """A file is not of the layout or version we can read."""


class CheckpointError(IncompatibleFileError):
    """A checkpoint is damaged (its checksum fails) or belongs to another scan: it is refused,
    never resumed into a results file. ``reason`` is the key it is counted under."""

    reason = "checkpoint_refused"


class BadMessageError(SxdmError, ValueError):
    """A message from a socket cannot be decoded (malformed, unknown tag, truncated payload...).

    ``reason`` is a short stable key under which the processor counts such messages.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason
