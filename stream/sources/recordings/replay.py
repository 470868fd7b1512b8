"""Replay a recorded acquisition as a detector stream, so that no processor can tell.

A recording (:mod:`sxdm_stream.sources.recordings.format`) is sent message by message exactly as it was
received. A beamline file (:class:`sxdm_stream.sources.files.filescan.FileScan`) is sent as one series: a
start message describing the scan and geometry from the file's metadata (``user_data`` sxdm
block), one image per frame with its measured positions and, when the file has the monitor
counter asked for, its monitor in ``user_data``, and the end. Frames stored one per chunk
with the bitshuffle-LZ4 filter (Eiger, Lima) are sent as read, never decompressed: the HDF5
filter's chunk is the DECTRIS ``bslz4`` payload, as a real detector's file writer has it.

The rate is ``1x`` (the acquisition's own pace: recorded arrival times, or the file's frame
period), any factor (``10x``) or ``max`` (as fast as the receiver takes them; PUSH waits for
a slow receiver, so nothing is lost).
"""

from __future__ import annotations

import re
import threading
import uuid
from typing import Callable

import numpy as np

from sxdm_stream.errors import ConfigError
from sxdm_stream.messages import SXDM_KEY, ImageFrame, SeriesEnd
from sxdm_stream.sources.dectris.compression import bslz4_array_tag
from sxdm_stream.sources.dectris.sender import (Pacer, StreamSender, describing_start,
                                                positions_user_data)
from sxdm_stream.sources.files.filescan import FileScan
from sxdm_stream.sources.recordings.format import RecordingReader

_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*x\s*$", re.IGNORECASE)


def parse_rate(text: str) -> float | None:
    """``"1x"``, ``"10x"``, ``"0.5x"`` -> the speed-up factor; ``"max"`` -> None."""
    if text.strip().lower() == "max":
        return None
    match = _RATE.match(text)
    if match is None or not float(match.group(1)) > 0:
        raise ConfigError(f"rate {text!r} is not 'max' nor a positive factor such as 1x or 10x")
    return float(match.group(1))


def replay_recording(reader: RecordingReader, sender: StreamSender, speed: float | None = None,
                     stop: threading.Event | None = None,
                     progress: Callable[[int], None] | None = None) -> int:
    """Send every message of a recording; returns the number sent.

    ``speed``: factor on the recorded pace (None: as fast as possible). ``progress`` is
    called with 1 after each message.
    """
    pacer, sent = Pacer(), 0
    for t_s, parts in reader.messages():
        pacer.wait_at(None if speed is None else t_s / speed, stop)
        if not sender.send_parts(parts, stop):
            break
        sent += 1
        if progress is not None:
            progress(1)
    return sent


def replay_file_scan(file_scan: FileScan, sender: StreamSender, speed: float | None = None,
                     series_id: int = 1, stop: threading.Event | None = None,
                     progress: Callable[[int], None] | None = None, block_size: int = 16) -> int:
    """Send a beamline file's scan as one detector series; returns the images sent.

    Raises
    ------
    ConfigError : a paced replay of a file that does not say its frame period.
    """
    period = None
    if speed is not None:
        if not file_scan.frame_period_s:
            raise ConfigError(f"{file_scan.path} does not say its frame period: replay it at "
                              "--rate max")
        period = file_scan.frame_period_s / speed
    unique = uuid.uuid4().hex
    start = describing_start(file_scan.scan, file_scan.geometry, series_id, unique, unique,
                             image_dtype=file_scan.image_dtype)
    if not sender.send_start(start, stop):
        return 0
    pacer, sent = Pacer(None if period is None else 1.0 / period), 0
    passthrough = sender.fmt == "cbor" and sender.compression == "bslz4"
    shape, dtype = file_scan.geometry.detector.shape, np.dtype(file_scan.image_dtype)
    scan = file_scan.scan
    with file_scan.open() as reader:
        for angle in range(scan.n_angles):
            for begin in range(0, scan.n_points, block_size):
                end = min(begin + block_size, scan.n_points)
                chunks = reader.read_bslz4(angle, begin, end) if passthrough else None
                frames = reader.read(angle, begin, end) if chunks is None else chunks
                for i, frame in enumerate(frames):
                    index = angle * scan.n_points + begin + i
                    pacer.wait_at(stop=stop)
                    encoded = bslz4_array_tag(shape, dtype, frame) if chunks is not None else None
                    image = ImageFrame(series_id, index, None if encoded is not None else frame,
                                       unique, _image_user_data(file_scan, index))
                    if not sender.send_image(image, stop, encoded=encoded):
                        return sent
                    sent += 1
                    if progress is not None:
                        progress(1)
    sender.send_end(SeriesEnd(series_id, unique), stop)
    return sent


def _image_user_data(file_scan: FileScan, index: int) -> dict:
    """The ``user_data`` of a frame: its measured positions and, if any, its monitor."""
    user_data = positions_user_data(file_scan.positions(index))
    monitor = file_scan.monitor(index)
    if monitor is not None:
        user_data[SXDM_KEY]["monitor"] = monitor
    return user_data


def replay(source: RecordingReader | FileScan, sender: StreamSender, speed: float | None = None,
           stop: threading.Event | None = None,
           progress: Callable[[int], None] | None = None) -> int:
    """Replay a recording or a file scan (see :func:`replay_recording`, :func:`replay_file_scan`)."""
    if isinstance(source, RecordingReader):
        return replay_recording(source, sender, speed, stop, progress)
    return replay_file_scan(source, sender, speed, stop=stop, progress=progress)


def source_length(source: RecordingReader | FileScan) -> int:
    """What a progress bar counts: messages of a recording, frames of a file scan."""
    return len(source) if isinstance(source, RecordingReader) else source.scan.n_frames
