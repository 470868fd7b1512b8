"""What a replay or a file processing reads: a recording, an ID01 scan set, an XSOCS master.

:func:`open_source` looks at the file and hands back a :class:`RecordingReader` (a recorded
stream, sent again as it was) or a :class:`FileScan` (frames in beamline files, sent as a
detector would send them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sxdm_stream.errors import ConfigError, IncompatibleFileError
from sxdm_stream.sources.files.filescan import FileScan, GeometryOverrides, open_hdf5
from sxdm_stream.sources.files.id01 import is_id01_scan_set, read_id01_scan_set
from sxdm_stream.sources.files.xsocs import is_xsocs_master, read_xsocs_master
from sxdm_stream.sources.recordings.format import RecordingReader, is_recording

KINDS = ("auto", "recording", "id01", "xsocs")


@dataclass(frozen=True)
class SourceOptions:
    """How to read a file source.

    Parameters
    ----------
    kind : "auto" (look at the file), "recording", "id01" or "xsocs".
    detector : the ID01 detector's name (default: the one present).
    scans : ID01 scan numbers to use, in acquisition order (default: every SXDM scan).
    overrides : geometry values that replace the file's metadata.
    monitor : beamline files: the ``measurement/`` counter that monitors the beam, by which
        frames are normalised (None: not normalised). A recording carries its monitor, if
        any, in its images' ``user_data``.
    """

    kind: str = "auto"
    detector: str | None = None
    scans: tuple[int, ...] | None = None
    overrides: GeometryOverrides | None = None
    monitor: str | None = None


def open_source(path, options: SourceOptions | None = None) -> RecordingReader | FileScan:
    """Open ``path`` as the kind of source it is (or the one ``options.kind`` names).

    Raises
    ------
    IncompatibleFileError : the file is none of the kinds, or not a readable one of them.
    ConfigError : a monitor counter named for a recording.
    """
    options = options or SourceOptions()
    path = Path(path)
    if options.kind not in KINDS:
        raise IncompatibleFileError(f"source kind {options.kind!r} is not one of {KINDS}")
    if not path.exists():
        raise IncompatibleFileError(f"no such source file: {path}")
    if options.kind == "recording" or (options.kind == "auto" and is_recording(path)):
        if options.monitor is not None:
            raise ConfigError(f"{path} is a recording: its images carry their monitor, if any; "
                              "a monitor counter is chosen for beamline files only")
        return RecordingReader(path)
    kind = options.kind
    if kind == "auto":
        with open_hdf5(path) as f:
            kind = "xsocs" if is_xsocs_master(f) else "id01" if is_id01_scan_set(f) else None
        if kind is None:
            raise IncompatibleFileError(
                f"{path} is neither a recording, nor an ID01 BLISS scan set (<n>.1 scans with "
                "technique/dim0, dim1), nor an XSOCS master file (entries with "
                "instrument/detector/center_chan_dim0)")
    if kind == "xsocs":
        return read_xsocs_master(path, options.overrides, monitor=options.monitor)
    return read_id01_scan_set(path, options.detector,
                              list(options.scans) if options.scans else None, options.overrides,
                              monitor=options.monitor)
