"""Where results go: checked before the first frame, one file per series, none replaced.

A results file is the record of a scan, so:

* the output folder must exist and take a file before anything is received
  (:func:`check_output`), or the run never starts;
* an existing file at ``out`` is replaced only to resume that scan (``resume``) or when the
  user says so (``overwrite``);
* two series never share a file. Series ids repeat (DECTRIS' own sample messages carry five
  series, all with ``series_id=1``; a restarted detector counts from 1 again), so a series
  is named by its id and, when that name is taken, by its ``series_unique_id``
  (:class:`ResultPaths`).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

from sxdm_stream.errors import ConfigError
from sxdm_stream.messages import SeriesStart

log = logging.getLogger(__name__)


def check_output(out: Path, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse (ConfigError, one line) an output that cannot be written or would replace a
    file: the folder must exist and be writable; ``out`` must not exist unless ``overwrite``
    or ``resume``."""
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"the output folder {folder} does not exist (--out {out})")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".sxdm-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write in the output folder {folder}: "
                          f"{exc.strerror or exc}") from None
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the results file's name")
    if out.exists() and not (overwrite or resume) and "{" not in out.name:
        raise ConfigError(f"{out} exists: it is never replaced; give another --out, --resume "
                          "its scan, or --overwrite it")


class ResultPaths:
    """The results file of each series of one run.

    The first series is written to ``out``, later ones to ``<stem>_<series_id><suffix>``;
    ``out`` may instead hold ``{series_id}`` and/or ``{series_unique_id}``. A name already
    given to another series of this run, or a file that existed before (unless
    ``overwrite``), is never reused: the series' unique id, then a count, is added.

    Parameters
    ----------
    out : the user's results path (None: nothing is written).
    overwrite : existing files may be replaced (not those of this run's other series).
    """

    def __init__(self, out: Path | None, overwrite: bool = False) -> None:
        self.out, self.overwrite = out, overwrite
        self._given: set[Path] = set()

    def claim(self, path: Path) -> None:
        """Reserve ``path`` (the resumed scan's file)."""
        self._given.add(path)

    def path_for(self, series: SeriesStart, index: int) -> Path | None:
        """The file of ``series``, the ``index``-th series of the run (1-based)."""
        if self.out is None:
            return None
        wanted = self._wanted(series, index)
        path = wanted
        for candidate in self._alternatives(wanted, series):
            path = candidate
            if self._free(path, first=index == 1 and path == self.out):
                break
        if path != wanted:
            log.warning("series %s (%s): %s is taken (another series of this run, or a file "
                        "from before); its results go to %s", series.series_id,
                        series.series_unique_id, wanted, path)
        self._given.add(path)
        return path

    def _wanted(self, series: SeriesStart, index: int) -> Path:
        out = self.out
        if "{" in out.name:
            try:
                name = out.name.format(series_id=series.series_id,
                                       series_unique_id=_safe(series.series_unique_id or ""))
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"--out {out.name}: only {{series_id}} and "
                                  f"{{series_unique_id}} may be filled in ({exc})") from None
            return out.with_name(name)
        if index <= 1:
            return out
        return out.with_name(f"{out.stem}_{series.series_id}{out.suffix}")

    def _alternatives(self, wanted: Path, series: SeriesStart):
        yield wanted
        stem, suffix = wanted.stem, wanted.suffix
        unique = _safe(series.series_unique_id or "")
        if unique and unique not in stem:
            stem = f"{stem}_{unique}"
            yield wanted.with_name(f"{stem}{suffix}")
        n = 2
        while True:
            yield wanted.with_name(f"{stem}_{n}{suffix}")
            n += 1

    def _free(self, path: Path, first: bool) -> bool:
        if path in self._given:
            return False
        # ``out`` itself was checked at start (check_output): resume or overwrite allowed it
        return first or self.overwrite or not path.exists()


def _safe(text: str, limit: int = 64) -> str:
    """``text`` as a file-name part: letters, digits, ``.``, ``_`` and ``-`` only."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:limit].strip(".")
