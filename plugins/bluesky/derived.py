"""The result maps of a series as a derived bluesky run, for standard bluesky consumers.

When the live processor finishes a series, :class:`DerivedRunPublisher` emits one run
(start, descriptor, event, stop; composed with ``event_model.compose_run``) through a
``bluesky.callbacks.zmq.Publisher`` to the 0MQ proxy's in-port, under its own prefix
(``b"sxdm-maps"`` by default) so consumers can pick it out, and serialised with msgpack
(arrays in msgpack-numpy's format, :mod:`.codec`) unless told otherwise. Any callback can also be fed the
documents directly (:func:`maps_run_documents`).

The run:

* start: ``plan_name = "sxdm_stream_maps"``, ``sxdm_maps`` = {series id and unique id,
  correlation id (the acquisition run's), complete, results file, frame counts, scan
  description}; deliberately no ``sxdm`` block, so it is never taken for an acquisition;
* one descriptor, stream ``maps``: one data key per map (``dtype`` "array", shape, units,
  from :data:`sxdm_stream.core.maps.MAP_FIELDS`) plus scalar summaries (``mean_d``,
  ``strain_spread``, ``max_tilt``, ``peak_position``);
* one event with every map; stop with ``exit_status`` "success" (complete) or "fail".
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

import numpy as np
from event_model import compose_run

from sxdm_stream import MAP_FIELDS, map_arrays

from .feedback import summarize_maps
from .remote import DERIVED_PREFIX, serializer_pair

log = logging.getLogger(__name__)

PLAN_NAME = "sxdm_stream_maps"
_SUMMARY_UNITS = {"mean_d": "angstrom", "strain_spread": "microstrain", "max_tilt": "degree",
                  "peak_position": "degree"}


def maps_run_documents(result) -> Iterator[tuple[str, dict]]:
    """The documents of the derived run of one series.

    Parameters
    ----------
    result : a :class:`sxdm_stream.runtime.processor.SeriesResult` (maps, identifiers, scan).

    Yields
    ------
    (name, doc) : start, descriptor, event, stop.
    """
    now = time.time()
    scan = result.scan
    arrays = map_arrays(result.maps)
    summary = summarize_maps(result.maps, scan.rocking_angles) if scan is not None else {}
    summary = {k: float(v) for k, v in summary.items() if k in _SUMMARY_UNITS}
    bundle = compose_run(metadata={
        "plan_name": PLAN_NAME,
        "sxdm_maps": {"series_id": int(result.series_id),
                      "series_unique_id": result.series_unique_id,
                      "correlation_id": result.correlation_id, "complete": bool(result.complete),
                      "results_file": str(result.path) if result.path else None,
                      "frames": {k: int(v) for k, v in result.frames.items()},
                      "scan": scan.describe() if scan is not None else None,
                      "d_ref": float(result.maps.d_ref)}}, time=now)
    yield "start", bundle.start_doc
    data_keys = {name: {"dtype": "array", "shape": list(value.shape), "source": "sxdm-stream",
                        "dtype_numpy": value.dtype.str,
                        "units": MAP_FIELDS.get(name, ("",))[0] or None}
                 for name, value in arrays.items()}
    data_keys.update({name: {"dtype": "number", "shape": [], "source": "sxdm-stream",
                             "units": _SUMMARY_UNITS[name]} for name in summary})
    descriptor = bundle.compose_descriptor(name="maps", data_keys=data_keys)
    yield "descriptor", descriptor.descriptor_doc
    data = {**arrays, **summary}
    yield "event", descriptor.compose_event(data=data, timestamps={k: now for k in data},
                                            seq_num=1, validate=False)
    yield "stop", bundle.compose_stop(exit_status="success" if result.complete else "fail",
                                      reason="" if result.complete else "series incomplete")


class DerivedRunPublisher:
    """Publishes each finished series of a live processor as a derived bluesky run.

    Parameters
    ----------
    address : the 0MQ proxy's in-port, "host:port" (e.g. "localhost:5577").
    prefix : the documents' prefix (bytes without spaces), so consumers can select them.
    serializer : "msgpack" (default) or "pickle" (explicitly; trusted networks only).

    Use ``live.on_result(publisher)``; close it when done.
    """

    def __init__(self, address: str, prefix: bytes = DERIVED_PREFIX,
                 serializer: str = "msgpack") -> None:
        from bluesky.callbacks.zmq import Publisher

        dumps, _ = serializer_pair(serializer)
        self.publisher: Callable = Publisher(address, prefix=prefix, serializer=dumps)
        self.runs = 0

    def __call__(self, result) -> None:
        for name, doc in maps_run_documents(result):
            self.publisher(name, doc)
        self.runs += 1
        log.info("series %s published as derived run (%s maps)", result.series_id,
                 "complete" if result.complete else "incomplete")

    def close(self) -> None:
        self.publisher.close()


def maps_from_event(doc: dict) -> dict[str, np.ndarray]:
    """The maps of a derived run's event, as arrays (documents may arrive as lists)."""
    return {k: np.asarray(v) for k, v in doc["data"].items()}
