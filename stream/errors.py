"""The errors a user can act on: bad configuration, bad input, incompatible files.

Everything the processor raises on purpose derives from :class:`SxdmError`, so callers can
tell "you asked for something impossible" from a bug. A value that came from outside is put
into an error message through :func:`format_untrusted`, never by ``repr`` or an f-string of
the value itself: a 5000-digit integer cannot be formatted, a megabyte string should not be.
"""

import reprlib
from typing import Any


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


class _UntrustedRepr(reprlib.Repr):
    """reprlib's bounded repr, made safe for what a hostile peer can send: integers of any
    size (whose decimal form Python refuses past 4300 digits), byte strings, arrays, mappings
    and tags nested to any depth. Everything is cut *before* its repr is built."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, width, width
        self.maxlist = self.maxtuple = self.maxset = self.maxdict = 6

    def repr_int(self, x, level):
        if x.bit_length() > 64:
            return f"<{'-' if x < 0 else ''}int of {x.bit_length()} bits>"
        return repr(x)

    def repr_bytes(self, x, level):
        head = repr(bytes(x[:self.maxstring]))
        return head if len(x) <= self.maxstring else f"{head}...<{len(x)} bytes>"

    repr_bytearray = repr_memoryview = repr_bytes
    repr_frozendict = reprlib.Repr.repr_dict      # cbor2's immutable maps

    def repr_ndarray(self, x, level):
        return f"<ndarray {x.dtype} {x.shape}>"

    def repr_CBORTag(self, x, level):              # cbor2's tags hold anything, nested
        inner = self.fillvalue if level <= 0 else self.repr1(x.value, level - 1)
        return f"CBORTag({self.repr1(x.tag, level)}, {inner})"

    def repr_instance(self, x, level):
        try:
            text = repr(x)
        except Exception:  # a repr that fails (a huge int inside, deep nesting): the type
            return f"<{type(x).__name__}>"
        return text if len(text) <= self.maxother else text[:self.maxother - 3] + "..."


def format_untrusted(value: Any, width: int = 60) -> str:
    """A short repr of a value that came from outside (a socket, a file), for an error message.

    Never raises and never builds a long string: an integer over 64 bits is shown by its bit
    length (formatting 10**5000 raises ValueError), strings and bytes are cut to ``width``
    before their repr is made, containers show a few items three levels deep, and the whole
    is at most about ``width`` characters.
    """
    try:
        text = _UntrustedRepr(width).repr(value)
    except Exception:  # a repr of a foreign type that fails: its type is enough
        text = f"<{type(value).__name__}>"
    return text if len(text) <= width else text[:width - 3] + "..."
