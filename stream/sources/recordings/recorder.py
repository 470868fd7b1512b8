"""Record a detector stream to a file, message by message, as received.

The recorder is one more PULL client of the detector's PUSH socket: with a processor
connected too, the two would share the images round-robin (a DECTRIS stream is not a
broadcast), so record *instead of* processing, or behind a fan-out. Nothing is decoded but
the small messages, to see the end of a series.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import zmq

from sxdm_stream.errors import BadMessageError
from sxdm_stream.messages import SeriesEnd, SeriesStart
from sxdm_stream.sources.dectris.codec import Decoder
from sxdm_stream.sources.recordings.format import RecordingWriter

log = logging.getLogger(__name__)

#: messages at most this big are decoded to follow the series (starts, ends); images of a
#: real detector are bigger, and the few that are not cost nothing to decode
_SMALL_MESSAGE = 4096


@dataclass
class RecordCounters:
    """What was recorded."""

    messages: int = 0
    bytes: int = 0
    series_started: int = 0
    series_ended: int = 0
    started_s: float = field(default_factory=time.perf_counter)


def record_stream(endpoints: str | list[str], path: str | os.PathLike, max_series: int | None = 1,
                  stop: threading.Event | None = None, context: zmq.Context | None = None,
                  progress: Callable[[RecordCounters], None] | None = None) -> RecordCounters:
    """Connect a PULL socket to ``endpoints`` and write every message to a recording.

    Parameters
    ----------
    endpoints : the detector's PUSH endpoint(s), e.g. "tcp://HOST:31001".
    path : the recording to write (see :mod:`sxdm_stream.sources.recordings.format`).
    max_series : return after this many series ended (None: until ``stop``).
    stop : set it to end the recording (the file is then closed with its index).
    progress : called about once a second with the counters.

    Returns
    -------
    RecordCounters
    """
    endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 256)
    for endpoint in endpoints:
        sock.connect(endpoint)
    counters, decoder, last_report = RecordCounters(), Decoder(), time.perf_counter()
    try:
        with RecordingWriter(path) as writer:
            while not (stop is not None and stop.is_set()):
                if sock.poll(100):
                    parts = sock.recv_multipart()
                    writer.write(parts, time.perf_counter())
                    counters.messages += 1
                    counters.bytes += sum(len(p) for p in parts)
                    _follow_series(decoder, parts, counters)
                    if max_series is not None and counters.series_ended >= max_series:
                        break
                if progress is not None and time.perf_counter() - last_report >= 1.0:
                    last_report = time.perf_counter()
                    progress(counters)
    finally:
        sock.close()
    log.info("recorded %d messages (%.1f MB, %d series) to %s", counters.messages,
             counters.bytes / 1e6, counters.series_ended, path)
    return counters


def _follow_series(decoder: Decoder, parts: list[bytes], counters: RecordCounters) -> None:
    if sum(len(p) for p in parts) > _SMALL_MESSAGE:
        return
    try:
        message = decoder.decode(parts)
    except BadMessageError:
        return                                   # recorded as received all the same
    if isinstance(message, SeriesStart):
        counters.series_started += 1
    elif isinstance(message, SeriesEnd):
        counters.series_ended += 1
