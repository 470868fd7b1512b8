"""``sxdm-stream view``: the viewer's command line.

    sxdm-stream view --connect tcp://HOST:5560 [--serve tcp://HOST:5561]   follow a processor
    sxdm-stream view results.h5                                           show a results file

Parse, build the window, run Qt's event loop. Everything here is also available from Python:
:func:`build_window` gives the (not yet started) window for given arguments.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

from PySide6 import QtCore, QtWidgets

from .pixels import PixelService
from .results import FileHistograms, ResultsFile
from .subscriber import SnapshotFeed
from .window import DEFAULT_REFRESH_HZ, DEFAULT_STALE_AFTER_S, ViewerWindow

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``sxdm-stream view``."""
    parser = argparse.ArgumentParser(
        prog="sxdm-stream view", description="Live viewer of SXDM maps: follows a processor's "
        "snapshots (--connect) or shows a results file.")
    parser.add_argument("results", nargs="?", type=Path,
                        help="results file (NeXus HDF5) to show; followed while it is rewritten")
    parser.add_argument("--connect", metavar="ENDPOINT",
                        help="the processor's snapshot endpoint, e.g. tcp://HOST:5560")
    parser.add_argument("--serve", metavar="ENDPOINT",
                        help="the processor's pixel service (q-space histogram of a clicked "
                             "pixel), e.g. tcp://HOST:5561")
    parser.add_argument("--refresh-hz", type=float, default=DEFAULT_REFRESH_HZ,
                        help=f"most redraws per second (default {DEFAULT_REFRESH_HZ:g})")
    parser.add_argument("--stale-after", type=float, default=DEFAULT_STALE_AFTER_S,
                        metavar="SECONDS", help="warn when no snapshot came for this long "
                        f"(default {DEFAULT_STALE_AFTER_S:g})")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--screenshot", type=Path, metavar="PNG",
                        help="save the window as PNG once the first maps are shown, then exit "
                             "(with QT_QPA_PLATFORM=offscreen: a picture without a display)")
    parser.add_argument("--screenshot-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="give up on --screenshot after this long (exit status 1)")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the options (exits with a message when they do not fit together)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.results is None) == (args.connect is None):
        parser.error("give either a results file or --connect ENDPOINT (not both)")
    if args.serve and args.connect is None:
        parser.error("--serve goes with --connect: a results file holds its own histograms")
    if args.results is not None and not args.results.exists():
        parser.error(f"no results file {args.results}")
    if args.refresh_hz <= 0 or args.stale_after <= 0:
        parser.error("--refresh-hz and --stale-after must be positive")
    return args


def build_window(args: argparse.Namespace) -> ViewerWindow:
    """The viewer for parsed arguments; call ``start()`` on it to begin."""
    if args.connect is not None:
        source = SnapshotFeed(args.connect)
        pixels = PixelService(args.serve) if args.serve else None
    else:
        source = ResultsFile(args.results)
        pixels = FileHistograms(args.results)
    return ViewerWindow(source, pixels, refresh_hz=args.refresh_hz,
                        stale_after_s=args.stale_after)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the viewer; ``argv`` are the arguments after ``view`` (default: ``sys.argv[1:]``).

    Returns the exit status (0; 1 when a ``--screenshot`` could not be taken in time).
    """
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("sxdm_stream").setLevel(logging.DEBUG)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0]])
    app.setApplicationName("sxdm-stream viewer")
    window = build_window(args)
    status = {"code": 0}
    if args.screenshot is not None:
        _screenshot_when_drawn(window, app, args.screenshot, args.screenshot_timeout, status)
    # Qt's loop does not run Python's signal handlers: wake up now and then so Ctrl-C quits
    previous = signal.signal(signal.SIGINT, lambda *_: app.quit())
    heartbeat = QtCore.QTimer(window)
    heartbeat.timeout.connect(lambda: None)
    heartbeat.start(250)
    app.aboutToQuit.connect(window.stop)
    window.show()
    window.start()
    try:
        app.exec()
    finally:
        window.stop()
        heartbeat.stop()
        signal.signal(signal.SIGINT, previous)
        window.close()
        window.deleteLater()
    return status["code"]


def _screenshot_when_drawn(window: ViewerWindow, app: QtWidgets.QApplication, path: Path,
                           timeout_s: float, status: dict) -> None:
    """Save the window once the first maps are drawn (or give up after ``timeout_s``)."""
    shot, deadline = QtCore.QTimer(window), QtCore.QTimer(window)
    shot.setSingleShot(True)
    deadline.setSingleShot(True)

    def shoot() -> None:
        deadline.stop()
        window.export_png(path, whole_window=True)
        app.quit()

    def drawn() -> None:
        window.model.mapsChanged.disconnect(drawn)
        shot.start(300)                            # let the layout settle first

    def give_up() -> None:
        log.error("no maps from %s within %g s: no screenshot", window.source.describe(),
                  timeout_s)
        status["code"] = 1
        app.quit()

    shot.timeout.connect(shoot)
    deadline.timeout.connect(give_up)
    window.model.mapsChanged.connect(drawn)
    deadline.start(int(timeout_s * 1000))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
