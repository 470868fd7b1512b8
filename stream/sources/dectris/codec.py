"""DECTRIS SIMPLON stream messages to and from our messages: a pure codec, no sockets.

:class:`Decoder` turns the parts of one ZeroMQ message into a :class:`SeriesStart`,
:class:`ImageFrame` or :class:`SeriesEnd`, choosing the stream version per message: stream v1
("legacy") is multipart with a JSON first part, stream v2 ("cbor") one frame of CBOR. Every
failure, whatever raised it, comes out as :class:`BadMessageError` with a stable ``reason``:
``malformed``, ``unknown_type``, ``unknown_tag``, ``size_mismatch``, ``truncated_payload``,
``unsupported_encoding``, ``wrong_dtype``, ``wrong_shape`` (an image or mask unlike the start
message's), ``too_large`` (over the byte cap) or, for a bug of ours, ``internal_error``.
Images are checked against the cap and the last start message before any buffer is made
(:func:`sxdm_stream.sources.dectris.compression.checked_nbytes`; without a start that declared
their size, against the largest DECTRIS frame). Integer fields (ids, counts, sizes, time
ticks) are unsigned 64-bit integers, anything else is ``malformed``: CBOR and JSON carry
integers of any size, and one of 5000 digits cannot even be put in an error message (values
from the message are shown with :func:`sxdm_stream.errors.format_untrusted`). The
``encode_*`` functions are a compliant sender (our simulator's). Layouts:
``docs/reference/dectris_stream.md``.

This module keeps what lasts between messages (the last start's declarations, a held v1
header) and is the codec's public face: each stream version is read and written in its own
module, :mod:`sxdm_stream.sources.dectris.v1` and :mod:`sxdm_stream.sources.dectris.v2`, with the fields both
share in :mod:`sxdm_stream.sources.dectris.fields`; the image payloads themselves are decoded in
:mod:`sxdm_stream.sources.dectris.compression`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Sequence

import numpy as np

from sxdm_stream.errors import BadMessageError, ConfigError
from sxdm_stream.messages import ImageFrame, SeriesStart, StreamMessage
from sxdm_stream.sources.dectris.compression import MAX_IMAGE_BYTES, ImageSpec, PendingPixels
from sxdm_stream.sources.dectris.fields import bad_message
from sxdm_stream.sources.dectris.v1 import (decode_start_v1, decode_v1, encode_end_v1,
                                            encode_image_v1, encode_start_v1, is_lone_header,
                                            load_json)
from sxdm_stream.sources.dectris.v2 import (MAGIC, SELF_DESCRIBE_TAG, TIME_BASE_HZ,
                                            ChannelSelection, decode_v2, encode_end_v2,
                                            encode_image_v2, encode_start_v2, load_message)

# the encoders and v2 constants are re-exported: the codec is imported from here
__all__ = ["MAGIC", "SELF_DESCRIBE_TAG", "TIME_BASE_HZ", "Decoder", "decode_message",
           "encode_end_v1", "encode_end_v2", "encode_image_v1", "encode_image_v2",
           "encode_start_v1", "encode_start_v2"]

log = logging.getLogger(__name__)


class Decoder:
    """Decodes DECTRIS stream v1 and v2 messages, remembering what the last start declared.

    The state kept between messages, all of it per connection: the last start message's
    channels and image size and dtype (later images must match them), and a stream v1
    header waiting for its detector configuration when the two came as separate messages.

    Parameters
    ----------
    channel : str, optional
        The v2 channel to take from image ``data`` and start ``pixel_mask`` maps. By default
        the first of the last start message's ``channels`` if the map has it, else the map's
        first key.
    max_image_bytes : int
        Largest decoded image (or pixel mask), bytes; default
        :data:`~sxdm_stream.sources.dectris.compression.MAX_IMAGE_BYTES` (512 MiB, seven times an EIGER2 16M
        32-bit frame). Larger ones are rejected (``too_large``) before any buffer is made;
        one whose size no start message declared, beyond
        :data:`~sxdm_stream.sources.dectris.compression.MAX_UNDECLARED_IMAGE_BYTES` too.
    defer_pixels : bool
        Images come out with ``data`` a
        :class:`~sxdm_stream.sources.dectris.compression.PendingPixels`: everything checked
        but the payload's own framing, nothing decompressed; its ``decompress()`` (in any
        thread) gives the array or raises BadMessageError. A receiver's decode pool uses it.

    Attributes
    ----------
    channel : str or None
        The ``channel`` asked for.
    channels : tuple of str
        ``channels`` of the last v2 start message.
    declared : ImageSpec or None
        Image size and dtype the last start message declared (None before any start).
    quirks : collections.Counter
        Deviations from the protocol that were accepted, by kind: ``v1_header_split`` (a v1
        header and its detector configuration sent as two ZeroMQ messages, as LiberTEM's
        DECTRIS simulators do), ``v2_without_magic`` (a v2 message without the
        self-describe tag 55799, which DECTRIS' reference C parser stream2.c rejects).
    abandoned : collections.Counter
        Held parts given up, by kind: ``v1_header_without_config`` (a split v1 header whose
        configuration never came; logged as a warning). Its message returned None when it
        came in: a receiver that accounts for every message counts it again, as rejected.
    """

    def __init__(self, channel: str | None = None, max_image_bytes: int = MAX_IMAGE_BYTES,
                 defer_pixels: bool = False) -> None:
        if not isinstance(max_image_bytes, int) or isinstance(max_image_bytes, bool) \
                or max_image_bytes <= 0:
            raise ConfigError(f"max_image_bytes must be a positive integer, not "
                              f"{max_image_bytes!r}")
        self.max_image_bytes = max_image_bytes
        self.defer_pixels = defer_pixels
        self.declared: ImageSpec | None = None
        self.quirks: Counter = Counter()
        self.abandoned: Counter = Counter()
        self._held_header: bytes | None = None
        self._internal_errors_seen: set[type] = set()
        self._channels = ChannelSelection(channel)

    @property
    def channel(self) -> str | None:
        """The v2 channel asked for (None: the default one)."""
        return self._channels.configured

    @property
    def channels(self) -> tuple[str, ...]:
        """``channels`` of the last v2 start message."""
        return self._channels.announced

    @property
    def without_magic(self) -> int:
        """v2 messages without the self-describe tag 55799 (``quirks["v2_without_magic"]``)."""
        return self.quirks["v2_without_magic"]

    def decode(self, parts: Sequence[bytes] | bytes,
               received_s: float | None = None) -> StreamMessage | None:
        """Decode one ZeroMQ message.

        Parameters
        ----------
        parts : list of bytes, or bytes
            The message parts as ``recv_multipart`` returns them (or a v2 message's frame).
        received_s : float, optional
            ``time.perf_counter()`` of arrival, stored in :attr:`ImageFrame.received_s`.

        Returns
        -------
        SeriesStart or ImageFrame or SeriesEnd, or None
            None when the message is a stream v1 header whose detector configuration is to
            follow as the next message: it is kept, and that message returns the start.

        Raises
        ------
        BadMessageError
            When the message cannot be decoded; ``reason`` says why. Nothing else: an
            unexpected exception is counted ``internal_error`` (one message must never stop
            the thread that receives them).
        """
        try:
            parts = _as_parts(parts)
            extra = {} if received_s is None else {"received_s": received_s}
            if parts[0][:1] == b"{":
                return self._decode_v1(parts, extra)
            self.abandon_held()
            if len(parts) != 1:
                raise bad_message(f"message of {len(parts)} parts whose first is not JSON "
                                  "(stream v1) and not a single CBOR frame (stream v2)")
            return self._decode_v2(parts[0], extra)
        except BadMessageError:
            raise
        except Exception as exc:  # a bug of ours, or a library's surprise: never fatal
            raise self._internal_error(exc) from exc

    def decompress_pixels(self, frame: ImageFrame) -> ImageFrame:
        """``frame``, decoded with ``defer_pixels``, with its pixels decompressed.

        Any thread may call it, in any order: it reads nothing that the next messages change.
        Raises BadMessageError as :meth:`decode` does (``truncated_payload`` for a payload
        whose framing is corrupt, ``internal_error`` for anything unexpected).
        """
        if not isinstance(frame.data, PendingPixels):
            return frame
        try:
            return dataclasses.replace(frame, data=frame.data.decompress())
        except BadMessageError:
            raise
        except Exception as exc:  # as in decode: never fatal
            raise self._internal_error(exc) from exc

    def _internal_error(self, exc: Exception) -> BadMessageError:
        if type(exc) not in self._internal_errors_seen:  # the traceback once per kind
            self._internal_errors_seen.add(type(exc))
            log.warning("unexpected %s decoding a message (counted as 'internal_error')",
                        type(exc).__name__, exc_info=exc)
        return bad_message(f"internal error decoding the message: {type(exc).__name__}: "
                           f"{exc!s:.200}", "internal_error")

    def _decode_v2(self, data, extra: dict) -> StreamMessage:
        msg = load_message(data)
        if data[:3] != MAGIC:
            self.quirks["v2_without_magic"] += 1
        message = decode_v2(msg, self._channels, self.max_image_bytes, self.declared, extra,
                            self.defer_pixels)
        return self._declare(message) if isinstance(message, SeriesStart) else message

    def _declare(self, start: SeriesStart) -> SeriesStart:
        """Remember what ``start`` declared of its images: later images must match it."""
        shape = start.image_shape
        dtype = None if start.image_dtype is None else np.dtype(start.image_dtype)
        # v1 knows a bit depth only, which announces a float32 series as 32-bit too
        kind = dtype.kind if dtype is not None and start.stream_version == 2 else None
        self.declared = ImageSpec(None if shape is None else tuple(shape),
                                  None if dtype is None else dtype.itemsize, kind)
        return start

    def _decode_v1(self, parts: list, extra: dict) -> StreamMessage | None:
        header = load_json(parts[0], "first part")
        if self._held_header is not None and "htype" not in header:
            return self._complete_held_header(parts)
        self.abandon_held()
        if is_lone_header(header, parts):
            # LiberTEM's DECTRIS simulators send the header and its detector configuration
            # as two messages (LiberTEM-rs sim.rs send_headers, LiberTEM-live sim.py):
            # keep it for the configuration that comes next
            self._held_header = bytes(parts[0])
            return None
        message = decode_v1(header, parts, self.max_image_bytes, self.declared, extra,
                            self.defer_pixels)
        return self._declare(message) if isinstance(message, SeriesStart) else message

    def _complete_held_header(self, parts: list) -> SeriesStart:
        """The held v1 header and ``parts``, its detector configuration [and what follows]."""
        header_part, self._held_header = self._held_header, None
        start = decode_start_v1(load_json(header_part, "first part"), [header_part, *parts],
                                self.max_image_bytes)
        self.quirks["v1_header_split"] += 1
        return self._declare(start)

    def abandon_held(self) -> None:
        """Give up what is held (a split v1 header): counted in :attr:`abandoned`. Called
        when the next message is not its continuation, and by a receiver that stops."""
        if self._held_header is None:
            return
        header, self._held_header = self._held_header, None
        self.abandoned["v1_header_without_config"] += 1
        log.warning("a stream v1 header came alone and the next message is not its detector "
                    "configuration: the header is dropped (%.120r)", header)


def decode_message(parts: Sequence[bytes] | bytes, *, channel: str | None = None,
                   received_s: float | None = None) -> StreamMessage | None:
    """Decode one message with a fresh :class:`Decoder` (see :meth:`Decoder.decode`).

    Without a start message seen, a v2 image's channel is ``channel`` or the map's first key,
    and only the byte cap limits its size. A v1 header without its configuration part
    (``header_detail`` basic or all) returns None: it waits for the next message.
    """
    return Decoder(channel).decode(parts, received_s=received_s)


def _as_parts(parts) -> list:
    buffers = (bytes, bytearray, memoryview)
    parts = [parts] if isinstance(parts, buffers) else parts
    parts = list(parts) if isinstance(parts, Sequence) else []
    if not parts or not all(isinstance(p, buffers) for p in parts):
        raise bad_message("a message must be a non-empty list of bytes")
    return parts
