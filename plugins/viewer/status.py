"""Status of the processing: a banner when the processor cannot be reached, and a line of
figures (frames/s, lag, frame counts, scan progress) from the snapshot's header and the
processor's status it carries (:class:`sxdm_stream.LiveStatus`)."""

from __future__ import annotations

import time
from typing import Mapping

from PySide6 import QtCore, QtWidgets

from sxdm_stream import SnapshotHeader

from .model import IDLE, LOST, OK, STALE, MapState

#: banner colours by connection level: (background, text)
BANNER_STYLES = {LOST: ("#c62828", "white"), STALE: ("#f9a825", "black"),
                 IDLE: ("#e0e0e0", "black")}


class ConnectionBanner(QtWidgets.QLabel):
    """A coloured line across the window; hidden while snapshots flow."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.level = OK
        self.setWordWrap(True)
        self.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.hide()

    def show_connection(self, level: str, message: str) -> None:
        """Slot for :attr:`ViewerModel.connectionChanged`."""
        self.level = level
        if level == OK:
            self.hide()
            return
        background, colour = BANNER_STYLES.get(level, BANNER_STYLES[LOST])
        self.setStyleSheet(f"background: {background}; color: {colour}; font-weight: bold; "
                           "font-size: 13pt; padding: 6px")
        self.setText(("⚠ " if level == LOST else "") + message)
        self.show()


def format_rejected(rejected: Mapping[str, int]) -> str:
    """``3 (bad_position 2, wrong_dtype 1)``."""
    total = sum(int(n) for n in rejected.values())
    if not total:
        return "0"
    detail = ", ".join(f"{k} {n}" for k, n in sorted(rejected.items()) if n)
    return f"{total} ({detail})"


def format_seconds(value) -> str:
    """``12 ms``, ``3.4 s``, ``5 min``, ``2.0 h``; ``–`` when unknown."""
    if value is None:
        return "–"
    if value < 1:
        return f"{1000 * value:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.0f} min" if value < 7200 else f"{value / 3600:.1f} h"


def format_scan_state(header: SnapshotHeader) -> str:
    """``running``, ``complete``, or ``incomplete (37 frames missing)``."""
    if header.status == "incomplete":
        return f"incomplete ({header.frames_missing} frames missing)"
    return header.status


class StatusPanel(QtWidgets.QFrame):
    """One line of figures about the processing, and the scan progress."""

    FIELDS = ("source", "series", "rate", "lag", "age", "counts")

    def __init__(self, source: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.labels = {name: QtWidgets.QLabel() for name in self.FIELDS}
        self.labels["source"].setText(source)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setFormat("%v / %m frames (%p%)")
        self.progress.setMinimumWidth(220)
        self.progress.setMaximumWidth(300)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        for name in self.FIELDS:
            layout.addWidget(self.labels[name])
            layout.addWidget(_separator())
        layout.addStretch(1)
        layout.addWidget(self.progress)
        self._state: MapState | None = None

    def show_state(self, state: MapState) -> None:
        """Slot: the figures of a new snapshot."""
        self._state = state
        stats, header = state.stats, state.header
        self.labels["series"].setText(f"series {header.series_id} · {format_scan_state(header)}"
                                      f" · snapshot {header.seq or '–'}")
        rate = stats.frames_per_s             # 0 before the first frame, and from a file
        self.labels["rate"].setText(f"{rate:.0f} frames/s" if rate > 0 else "– frames/s")
        self.labels["lag"].setText(f"lag p50 {format_seconds(stats.latency_p50_s)}, "
                                   f"p99 {format_seconds(stats.latency_p99_s)}")
        self.labels["counts"].setText(
            f"received {stats.received} · processed {stats.processed} · "
            f"rejected {format_rejected(stats.rejected)} · "
            f"dropped {stats.dropped} · queued {stats.queued}")
        if stats.progress:
            done, total = stats.progress
            self.progress.setMaximum(max(total, 1))
            self.progress.setValue(min(done, max(total, 1)))
        self.tick()

    def tick(self) -> None:
        """Refresh the age of the snapshot shown (called by the window's timer)."""
        if self._state is None:
            self.labels["age"].setText("no snapshot yet")
            return
        sent = self._state.header.time_s
        age = time.time() - float(sent) if sent is not None else None
        self.labels["age"].setText(f"age {format_seconds(max(age, 0.0))}"
                                   if age is not None else "")

    def texts(self) -> dict[str, str]:
        """What the panel says, by field (for tests)."""
        return {name: label.text() for name, label in self.labels.items()} | {
            "progress": self.progress.text()}


def _separator() -> QtWidgets.QFrame:
    line = QtWidgets.QFrame()
    line.setFrameShape(QtWidgets.QFrame.Shape.VLine)
    line.setFrameShadow(QtWidgets.QFrame.Shadow.Sunken)
    return line
