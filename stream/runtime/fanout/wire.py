"""What crosses the fan-out's sockets (loopback ZeroMQ), besides the detector's own messages.

forwarder -> worker (PUSH/PULL, one socket per worker): ``[b"det", *parts]`` a detector
message as it came (its ZeroMQ frames forwarded untouched), or ``[b"ctl", json]`` an order:
``{"kind": "stop"}`` (finish the current series as cut short, say goodbye, exit).

worker -> reducer (PUSH/PULL, one socket for all): ``[json header, *array buffers]``; the
header's ``kind``:

* ``ready``: ``{"worker"}``, the worker is connected;
* ``partial``: ``{"worker", "series_id", "series_unique_id", "ended", "rows": [first, end],
  "processed", "rejected": {reason: n}, "invalid_pixels", "arrays": [{"name", "dtype",
  "shape"}...]}``, followed by one buffer per array (C order): the sums of the worker's rows
  (``moments``, ``roi_moments``, ``frame_count`` of shape (angles, rows*cols, ...),
  ``histogram``, ``shell_moments`` of shape (rows*cols, ...)) and ``included`` (bool, one per
  frame of the full scan);
* ``bye``: ``{"worker", "rejected": {reason: n}, "peak_rss_mib"}`` images rejected outside
  any series, and the worker's peak resident memory.

Arrays are raw buffers with dtype and shape in the header: nothing is ever unpickled.
"""

from __future__ import annotations

import json

import numpy as np

from sxdm_stream.errors import BadMessageError

#: dtypes a partial may carry (anything else is refused)
ARRAY_DTYPES = {"float64", "float32", "int64", "bool"}


def encode(header: dict, arrays: dict[str, np.ndarray] | None = None) -> list:
    """``[json header, *buffers]``; the header lists the arrays."""
    arrays = arrays or {}
    header = {**header, "arrays": [{"name": k, "dtype": str(a.dtype), "shape": list(a.shape)}
                                   for k, a in arrays.items()]}
    return [json.dumps(header).encode()] + [np.ascontiguousarray(a) for a in arrays.values()]


def decode(parts: list) -> tuple[dict, dict[str, np.ndarray]]:
    """Header and arrays of one message (BadMessageError if it does not match its header)."""
    try:
        header = json.loads(bytes(parts[0]))
        specs = header["arrays"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadMessageError(f"fan-out message without a JSON header: {exc}") from None
    if len(specs) != len(parts) - 1:
        raise BadMessageError(f"fan-out header lists {len(specs)} arrays, "
                              f"{len(parts) - 1} follow")
    arrays = {}
    for spec, part in zip(specs, parts[1:]):
        if spec["dtype"] not in ARRAY_DTYPES:
            raise BadMessageError(f"fan-out array {spec['name']!r} of dtype {spec['dtype']!r}")
        buffer = part.buffer if hasattr(part, "buffer") else part
        array = np.frombuffer(buffer, dtype=spec["dtype"])
        shape = tuple(int(v) for v in spec["shape"])
        if array.size != int(np.prod(shape)):
            raise BadMessageError(f"fan-out array {spec['name']!r}: {array.size} values for "
                                  f"shape {shape}")
        arrays[spec["name"]] = array.reshape(shape)
    return header, arrays


def order(kind: str, **fields) -> list:
    """A control message forwarder -> worker."""
    return [b"ctl", json.dumps({"kind": kind, **fields}).encode()]
