"""Detector frames written to files and referenced by documents, read back with h5py.

Two ways a bluesky run points at frames that an area detector wrote to HDF5:

* legacy ophyd (``resource`` / ``datum``): spec ``AD_HDF5``, file ``root/resource_path``,
  frames in ``/entry/data/data``; ``resource_kwargs["frame_per_point"]`` frames per event,
  ``datum_kwargs["point_number"]`` the event's point; the event holds the datum id;
* ophyd-async (``stream_resource`` / ``stream_datum``): mimetype ``application/x-hdf5``,
  ``uri="file://host/abs/path"``, ``parameters["dataset"]``; a stream datum maps the events
  ``seq_nums`` [start, stop) to the dataset's ``indices`` [start, stop).

Files are opened read-only and kept open for the run; a file still being written (SWMR or
the same process) is refreshed when an index lies beyond what was seen.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, Mapping
from urllib.parse import unquote, urlparse

import h5py
import numpy as np

from sxdm_stream import BadMessageError

log = logging.getLogger(__name__)

AD_HDF5_DATASET = "/entry/data/data"
HDF5_MIMETYPE = "application/x-hdf5"


class FrameFiles:
    """The frame references of one run and the open files they point into."""

    def __init__(self) -> None:
        self.resources: dict[str, Mapping] = {}
        self.datums: dict[str, Mapping] = {}
        self.stream_resources: dict[str, Mapping] = {}
        self._files: dict[str, h5py.File] = {}

    # ---- documents ------------------------------------------------------------------------
    def add_resource(self, doc: Mapping) -> None:
        if doc.get("spec") != "AD_HDF5":
            log.warning("resource %s has spec %r; only AD_HDF5 frames can be read",
                        doc.get("uid"), doc.get("spec"))
        self.resources[doc["uid"]] = doc

    def add_datum(self, doc: Mapping) -> None:
        self.datums[doc["datum_id"]] = doc

    def add_stream_resource(self, doc: Mapping) -> None:
        if doc.get("mimetype") != HDF5_MIMETYPE:
            log.warning("stream resource %s has mimetype %r; only %s can be read",
                        doc.get("uid"), doc.get("mimetype"), HDF5_MIMETYPE)
        self.stream_resources[doc["uid"]] = doc

    # ---- frames -----------------------------------------------------------------------------
    def frame_of_datum(self, datum_id: str) -> np.ndarray:
        """The frame an event's datum id points at (``frame_per_point`` frames are summed)."""
        datum = self.datums.get(datum_id)
        if datum is None:
            raise BadMessageError(f"event refers to unknown datum {datum_id!r}", "unknown_datum")
        resource = self.resources.get(datum["resource"])
        if resource is None or resource.get("spec") != "AD_HDF5":
            raise BadMessageError(f"datum {datum_id!r} refers to an unknown or unreadable "
                                  f"resource {datum['resource']!r}", "unknown_resource")
        path = os.path.join(resource.get("root", ""), resource["resource_path"])
        per_point = int(resource.get("resource_kwargs", {}).get("frame_per_point", 1))
        first = int(datum["datum_kwargs"]["point_number"]) * per_point
        frames = self._read(path, AD_HDF5_DATASET, first, first + per_point)
        return frames[0] if per_point == 1 else frames.sum(axis=0)

    def frames_of_stream_datum(self, doc: Mapping) -> Iterator[tuple[int, np.ndarray]]:
        """(seq_num, frame) for every event a stream datum covers."""
        resource = self.stream_resources.get(doc["stream_resource"])
        if resource is None or resource.get("mimetype") != HDF5_MIMETYPE:
            raise BadMessageError(f"stream datum {doc.get('uid')} refers to an unknown or "
                                  f"unreadable stream resource {doc['stream_resource']!r}",
                                  "unknown_resource")
        path = unquote(urlparse(resource["uri"]).path)
        dataset = resource.get("parameters", {}).get("dataset", AD_HDF5_DATASET)
        indices, seq = doc["indices"], doc["seq_nums"]
        frames = self._read(path, dataset, int(indices["start"]), int(indices["stop"]))
        per_event = max(len(frames) // max(int(seq["stop"]) - int(seq["start"]), 1), 1)
        for k, seq_num in enumerate(range(int(seq["start"]), int(seq["stop"]))):
            block = frames[k * per_event:(k + 1) * per_event]
            yield seq_num, block[0] if per_event == 1 else block.sum(axis=0)

    def _read(self, path: str, dataset: str, start: int, stop: int) -> np.ndarray:
        try:
            ds = self._open(path)[dataset]
            if ds.shape[0] < stop:            # still being written: reopen to see new frames
                self._files.pop(path).close()
                ds = self._open(path)[dataset]
            if ds.shape[0] < stop:
                raise BadMessageError(f"{path}:{dataset} holds {ds.shape[0]} frames, "
                                      f"frames {start}..{stop - 1} were referenced", "missing_frame")
            return ds[start:stop]
        except (OSError, KeyError) as exc:
            raise BadMessageError(f"cannot read frames {start}..{stop - 1} of {path}:{dataset}: "
                                  f"{exc}", "unreadable_file") from None

    def _open(self, path: str) -> h5py.File:
        handle = self._files.get(path)
        if handle is None:
            try:
                handle = h5py.File(path, "r", swmr=True)
            except OSError:
                handle = h5py.File(path, "r")
            self._files[path] = handle
        return handle

    def close(self) -> None:
        """Close the files of the run and forget its references."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self.resources.clear()
        self.datums.clear()
        self.stream_resources.clear()
