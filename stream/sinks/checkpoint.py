"""Checkpoints: the whole state of a scan in progress, so a restarted processor resumes.

A checkpoint holds the scan set-up (description and pixel mask), the accumulator's sums, which
frame indices are already in them, the frame counters and the series identity. It is written
atomically (temporary file, fsync, rename): a processor killed at any moment leaves either the
previous checkpoint or the new one, never half of one. Resuming loads it, and frames already
included are skipped, so the final maps equal those of an uninterrupted run.

Nothing in a checkpoint is taken on trust. A SHA-256 digest of the whole HDF5 file is kept in
its user block (the 512 bytes before the HDF5 data, which HDF5 leaves to applications) and
checked before HDF5 reads a byte of it: a few flipped bytes once resumed into a "complete"
file with values of 1e31, and damaged HDF5 metadata can crash the HDF5 library itself.
It also carries the fingerprint of its scan set-up (scan, geometry, pixel mask, accumulation
settings): a series that starts after a resume continues the checkpoint only if it is the
same series of the same scan (:func:`continues_series`). A damaged or foreign checkpoint raises
:class:`~sxdm_stream.errors.CheckpointError`: refused, never resumed into a results file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from sxdm_stream.core.accumulate import Accumulator, ScanSetup, setup_from_description
from sxdm_stream.errors import CheckpointError, ConfigError, SxdmError
from sxdm_stream.messages import SeriesStart
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.sinks.nexus import json_default
from sxdm_stream.sinks.results import write_in_blocks

log = logging.getLogger(__name__)

#: 2: metadata as one JSON attribute, the file's SHA-256 digest in its user block
CHECKPOINT_VERSION = 2
#: the user block: this magic line, then "sha256:<hex digest of every byte after the block>"
_MAGIC = b"sxdm-stream checkpoint 2\n"
_USERBLOCK = 512
_STATE_NAMES = ("moments", "histogram", "frame_count", "roi_moments", "shell_moments")


@dataclass
class Resumed:
    """A scan restored from a checkpoint."""

    processor: ScanProcessor
    series_id: int
    series_unique_id: str | None

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the scan set-up the checkpoint was written for."""
        return self.processor.setup.fingerprint


def checkpoint_path(results_path: str | Path) -> Path:
    """Where the checkpoint of a results file lives: ``<results>.checkpoint.h5``."""
    p = Path(results_path)
    return p.with_name(p.stem + ".checkpoint.h5")


def write_checkpoint(path: str | Path, processor: ScanProcessor, series_id: int,
                     series_unique_id: str | None) -> None:
    """Write the state of ``processor`` atomically, with its digest. Call with a consistent
    copy if frames are still being added from another thread."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    meta, arrays = _content(processor, series_id, series_unique_id)
    with h5py.File(tmp, "w", userblock_size=_USERBLOCK) as f:
        f.attrs["sxdm_checkpoint_version"] = CHECKPOINT_VERSION
        f.attrs["meta"] = meta
        for name, array in arrays.items():
            if array.dtype == bool:
                f.create_dataset(name, data=array, compression="gzip")
            else:                                 # a few MB per call: h5py holds the GIL
                write_in_blocks(f.create_dataset(name, array.shape, array.dtype), array)
    with open(tmp, "rb+") as fh:
        fh.seek(_USERBLOCK)
        header = _MAGIC + b"sha256:" + _file_digest(fh).encode() + b"\n"
        fh.seek(0)
        fh.write(header.ljust(_USERBLOCK, b"\0"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _file_digest(fh) -> str:
    """SHA-256 of the rest of an open binary file, from its current position."""
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 22), b""):
        digest.update(block)
    return digest.hexdigest()


def _check_digest(path: str | Path, advice: str) -> None:
    """CheckpointError unless ``path``'s user block holds the digest of the rest of the file."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(_USERBLOCK)
            actual = _file_digest(fh)
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror}): {advice}") from None
    if not header.startswith(_MAGIC):
        raise CheckpointError(f"{path} is not an sxdm-stream checkpoint of version "
                              f"{CHECKPOINT_VERSION} (or its first bytes are damaged): {advice}")
    stored = header[len(_MAGIC):].split(b"\n", 1)[0]
    if stored != b"sha256:" + actual.encode():
        raise CheckpointError(f"{path} is corrupted (its SHA-256 digest does not match its "
                              f"content): {advice}")


def _content(processor: ScanProcessor, series_id: int,
             series_unique_id: str | None) -> tuple[str, dict[str, np.ndarray]]:
    """(metadata as JSON text, arrays): what a checkpoint holds."""
    setup = processor.setup
    counters = processor.counters
    meta = json.dumps({
        "fingerprint": setup.fingerprint, "series_id": int(series_id),
        "series_unique_id": series_unique_id, "setup": setup.describe(),
        "counters": {"received": counters.received, "processed": counters.processed,
                     "rejected": dict(counters.rejected)},
        "angles_done": int(processor.angles_done), "invalid_pixels": processor.invalid_pixels,
    }, default=json_default, sort_keys=True)
    arrays = {"included": processor.included, **processor.accumulator.state()}
    if setup.geometry.detector.mask is not None:
        arrays["pixel_mask"] = np.asarray(setup.geometry.detector.mask, dtype=bool)
    return meta, arrays


def read_checkpoint(path: str | Path, mask_fraction: float, d_ref: float | None) -> Resumed:
    """Restore a scan from a checkpoint.

    Raises CheckpointError (one line, naming the file) if the file is not a checkpoint of
    this version, cannot be read, fails its digest, or does not rebuild its scan set-up.
    """
    meta, arrays = _read_verified(path)
    try:
        setup = setup_from_description(meta["setup"], arrays.get("pixel_mask"))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its scan set-up cannot be rebuilt ({exc}): not "
                              "resumed") from None
    if setup.fingerprint != meta["fingerprint"]:
        raise CheckpointError(f"{path}: the stored set-up does not rebuild identically "
                              "(written by another sxdm-stream version?): not resumed")
    processor = ScanProcessor(setup, mask_fraction, d_ref)
    processor.accumulator = Accumulator.from_state(
        setup, {name: arrays[name] for name in _STATE_NAMES if name in arrays})
    processor.accumulator.invalid_pixels = int(meta["invalid_pixels"])
    processor.included[:] = arrays["included"]
    counters = meta["counters"]
    processor.counters.received = counters["received"]
    processor.counters.processed = counters["processed"]
    processor.counters.rejected = Counter(counters["rejected"])
    processor.angles_done = int(meta["angles_done"])
    processor.resumed_from = Path(path)
    return Resumed(processor, int(meta["series_id"]), meta["series_unique_id"] or None)


def _read_verified(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays) of a checkpoint whose digest holds; CheckpointError otherwise."""
    advice = "not resumed; move it away to start the scan afresh"
    _check_digest(path, advice)
    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("sxdm_checkpoint_version")
            if version != CHECKPOINT_VERSION:
                raise ValueError(f"version {version}")
            meta = json.loads(str(f.attrs["meta"]))
            arrays = {name: node[()] for name, node in f.items() if isinstance(node, h5py.Dataset)}
        if not {"setup", "fingerprint", "counters", "series_id"} <= meta.keys() or \
                "included" not in arrays:
            raise ValueError("keys are missing")
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__   # intact, yet not ours
        raise CheckpointError(f"{path} is not a checkpoint this version reads ({reason}): "
                              f"{advice}") from None
    return meta, arrays


def checkpoint_matches(resumed: Resumed | ScanProcessor, setup: ScanSetup) -> bool:
    """Whether ``setup`` (the set-up a starting series asks for) is the scan set-up the
    checkpoint was written for: same scan, geometry, pixel mask and accumulation settings."""
    processor = resumed.processor if isinstance(resumed, Resumed) else resumed
    return processor.setup.fingerprint == setup.fingerprint


def continues_series(processor: ScanProcessor, series: SeriesStart | None, start: SeriesStart,
                     setup_of: Callable[[], ScanSetup], resumed: bool) -> bool:
    """Whether the series ``start`` re-announces the one ``processor`` holds (``series`` its
    start), so that its frames go on into the same sums.

    * The same series id and ``series_unique_id``: a detector restarting the series it sends.
    * Stream v1 sends no unique id: the same series id continues only a series ``resumed``
      from a checkpoint, and only when the set-up the start asks for (``setup_of()``) has the
      checkpoint's fingerprint (:func:`checkpoint_matches`).

    Returns False when ``start`` begins another series (the current one is then closed).
    Raises CheckpointError when the series was ``resumed`` and ``start`` describes another
    scan set-up: a checkpoint of another scan is refused, nothing of it may be written.
    """
    setup = None
    if resumed:
        try:
            setup = setup_of()
        except SxdmError:                         # the start does not describe its scan (yet)
            setup = None
        if setup is not None and not checkpoint_matches(processor, setup):
            raise CheckpointError(
                f"the checkpoint {processor.resumed_from or ''} is of another scan than series "
                f"{start.series_id} ({start.series_unique_id or 'no unique id'}) now starting: "
                f"their scan, geometry, pixel mask or accumulation settings differ (set-up "
                f"{processor.setup.fingerprint}, not {setup.fingerprint}); the checkpoint is "
                "refused, nothing of it is written, the series starts afresh")
    if series is None or start.series_id != series.series_id:
        return False
    if start.series_unique_id is not None and series.series_unique_id is not None:
        return start.series_unique_id == series.series_unique_id
    return resumed and setup is not None and start.series_unique_id == series.series_unique_id
