"""Checkpoints: the whole state of a scan in progress, so a restarted processor resumes.

A checkpoint holds the scan set-up (description and pixel mask), the accumulator's sums, which
frame indices are already in them, the frame counters and the series identity. It is written
atomically (temporary file, fsync, rename): a processor killed at any moment leaves either the
previous checkpoint or the new one, never half of one. Resuming loads it, and frames already
included are skipped, so the final maps equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .accumulate import Accumulator, setup_from_description
from .errors import IncompatibleFileError
from .hdf5 import json_default
from .pipeline import ScanProcessor

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


@dataclass
class Resumed:
    """A scan restored from a checkpoint."""

    processor: ScanProcessor
    series_id: int
    series_unique_id: str | None


def checkpoint_path(results_path: str | Path) -> Path:
    """Where the checkpoint of a results file lives: ``<results>.checkpoint.h5``."""
    p = Path(results_path)
    return p.with_name(p.stem + ".checkpoint.h5")


def write_checkpoint(path: str | Path, processor: ScanProcessor, series_id: int,
                     series_unique_id: str | None) -> None:
    """Write the state of ``processor`` atomically. Call with a consistent copy if frames
    are still being added from another thread."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    setup = processor.setup
    with h5py.File(tmp, "w") as f:
        f.attrs["sxdm_checkpoint_version"] = CHECKPOINT_VERSION
        f.attrs["fingerprint"] = setup.fingerprint
        f.attrs["series_id"] = int(series_id)
        f.attrs["series_unique_id"] = series_unique_id or ""
        f.attrs["setup"] = json.dumps(setup.describe(), default=json_default)
        f.attrs["counters"] = json.dumps({"received": processor.counters.received,
                                          "processed": processor.counters.processed,
                                          "rejected": dict(processor.counters.rejected)})
        f.attrs["angles_done"] = processor.angles_done
        mask = setup.geometry.detector.mask
        if mask is not None:
            f.create_dataset("pixel_mask", data=np.asarray(mask, dtype=bool), compression="gzip")
        f.create_dataset("included", data=processor.included, compression="gzip")
        for name, array in processor.accumulator.state().items():
            f.create_dataset(name, data=array)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: str | Path, mask_fraction: float, d_ref: float | None) -> Resumed:
    """Restore a scan from a checkpoint. Raises IncompatibleFileError if it is not one."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise IncompatibleFileError(f"{path} is not a readable checkpoint: {exc}") from None
    with f:
        if f.attrs.get("sxdm_checkpoint_version") != CHECKPOINT_VERSION:
            raise IncompatibleFileError(f"{path} is not an sxdm-stream checkpoint of version "
                                        f"{CHECKPOINT_VERSION}")
        mask = f["pixel_mask"][()] if "pixel_mask" in f else None
        setup = setup_from_description(json.loads(f.attrs["setup"]), mask)
        if setup.fingerprint != f.attrs["fingerprint"]:
            raise IncompatibleFileError(f"{path}: the stored set-up does not rebuild identically "
                                        "(different sxdm-stream version?)")
        processor = ScanProcessor(setup, mask_fraction, d_ref)
        processor.accumulator = Accumulator.from_state(
            setup, {name: f[name][()] for name in ("moments", "histogram", "frame_count",
                                                   "roi_moments") if name in f})
        processor.included[:] = f["included"][()]
        counters = json.loads(f.attrs["counters"])
        processor.counters.received = counters["received"]
        processor.counters.processed = counters["processed"]
        processor.counters.rejected = Counter(counters["rejected"])
        processor.angles_done = int(f.attrs["angles_done"])
        return Resumed(processor, int(f.attrs["series_id"]), f.attrs["series_unique_id"] or None)

