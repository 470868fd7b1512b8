"""`record` and `replay` run as a user runs them: separate processes over loopback sockets.

A simulated detector is recorded, the recording replayed into a live `process`, and the maps
compared with `process-file` of the same recording and with the in-process demo: a recording
replayed is indistinguishable from the detector it recorded.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, wait_until

from sxdm_stream.cli.main import main
from sxdm_stream.sinks.results import read_maps
from sxdm_stream.sources.recordings.format import INDEX_MAGIC, RecordingReader

CLI = [sys.executable, "-m", "sxdm_stream.cli"]
SCAN = ["--shape", "8", "10", "--angles", "7"]
N_FRAMES = 8 * 10 * 7
TIMEOUT = 300


@contextlib.contextmanager
def launched(args: list[str], log: Path):
    """A command running in its own process, stdout piped (endpoints are printed there),
    stderr to ``log`` (a pipe nobody reads could fill up and stall it). Killed if still
    running when the block ends, its pipe closed and its exit status collected."""
    with open(log, "w") as err, subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=err,
                                                 text=True) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=60)


def endpoint_of(proc: subprocess.Popen, log: Path) -> str:
    """The endpoint a command prints on its first line of stdout (``endpoint: tcp://...``)."""
    line = proc.stdout.readline()
    assert line.startswith("endpoint: "), f"no endpoint printed: {line!r}\n{log.read_text()}"
    return line.split(": ", 1)[1].strip()


def finished(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(TIMEOUT) == 0, f"{proc.args[3]} exited {proc.returncode}:\n{log.read_text()}"


def wait_for_text(log: Path, text: str, proc: subprocess.Popen) -> None:
    """Wait (up to TIMEOUT) until ``text`` appears in the log of a running ``proc``."""
    wait_until(lambda: text in log.read_text() or proc.poll() is not None, TIMEOUT)
    assert text in log.read_text(), f"exited {proc.returncode} first:\n{log.read_text()}"


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """A simulated scan recorded by `record` (which stops by itself at the series' end)."""
    base = tmp_path_factory.mktemp("record")
    run = base / "run.stream"
    with launched(["simulate", "--bind", "tcp://127.0.0.1:*", *SCAN], base / "sim.log") as sim:
        endpoint = endpoint_of(sim, base / "sim.log")
        with launched(["record", "--connect", endpoint, "--out", str(run)],
                      base / "record.log") as rec:
            finished(rec, base / "record.log")
        finished(sim, base / "sim.log")
    return run


def test_record_keeps_every_message_of_the_series_with_an_index(recording):
    with RecordingReader(recording) as reader:
        assert len(reader) == N_FRAMES + 2            # start, the images, end
    assert recording.read_bytes()[-16:-8] == INDEX_MAGIC   # closed, not re-indexed on reading


def test_replay_into_process_gives_the_maps_of_process_file_and_demo(recording, tmp_path, capsys):
    maps_h5 = tmp_path / "maps.h5"
    bind = f"tcp://127.0.0.1:{free_port()}"
    with launched(["replay", str(recording), "--bind", bind, "--rate", "max", "--no-progress"],
                  tmp_path / "replay.log") as rep:
        endpoint = endpoint_of(rep, tmp_path / "replay.log")
        assert endpoint == bind
        with launched(["process", "--connect", endpoint, "--out", str(maps_h5), "--series", "1"],
                      tmp_path / "process.log") as proc:
            finished(proc, tmp_path / "process.log")
        finished(rep, tmp_path / "replay.log")
    assert "complete" in (tmp_path / "process.log").read_text()
    assert main(["process-file", str(recording), "--out", str(tmp_path / "direct.h5"),
                 "--no-progress"]) == 0
    assert main(["demo", *SCAN, "--out", str(tmp_path / "demo")]) == 0
    capsys.readouterr()
    live = read_maps(maps_h5)
    for other in (read_maps(tmp_path / "direct.h5"),
                  read_maps(tmp_path / "demo" / "sxdm_results.h5")):
        np.testing.assert_array_equal(live["intensity"], other["intensity"])
        for name in ("strain", "d_spacing", "tilt_altitude", "tilt_azimuth", "qx", "qy", "qz"):
            np.testing.assert_allclose(live[name], other[name], rtol=1e-9, atol=1e-12,
                                       equal_nan=True, err_msg=name)
    assert live["strain"].shape == (8, 10) and np.isfinite(live["strain"][live["mask"]]).all()


def test_record_stopped_by_ctrl_c_closes_the_recording_with_its_index(tmp_path):
    run = tmp_path / "interrupted.stream"
    log = tmp_path / "record.log"
    with launched(["simulate", "--bind", "tcp://127.0.0.1:*", *SCAN], tmp_path / "sim.log") as sim:
        endpoint = endpoint_of(sim, tmp_path / "sim.log")
        # --series 0: record until interrupted; its once-a-second report says when all is in
        with launched(["record", "--connect", endpoint, "--out", str(run), "--series", "0"],
                      log) as rec:
            finished(sim, tmp_path / "sim.log")
            wait_for_text(log, f" {N_FRAMES + 2} messages,", rec)
            rec.send_signal(signal.SIGINT)
            finished(rec, log)
    assert "interrupted" in log.read_text()
    assert run.read_bytes()[-16:-8] == INDEX_MAGIC
    with RecordingReader(run) as reader:
        assert len(reader) == N_FRAMES + 2


def corrupt_copy(recording: Path, tmp_path: Path) -> Path:
    """The recording with its index offset pointing past the end of the file."""
    data = bytearray(recording.read_bytes())
    data[-8:] = (len(data) + 100).to_bytes(8, "little")
    bad = tmp_path / "corrupt.stream"
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize("case, says", [
    ("missing", "no such source file"),
    ("corrupt", "the recording is corrupt"),
    ("not_a_recording", "neither a recording|cannot open .* as HDF5"),
])
def test_replay_of_a_bad_file_exits_with_a_one_line_error(recording, tmp_path, case, says):
    if case == "missing":
        source = tmp_path / "nowhere.stream"
    elif case == "corrupt":
        source = corrupt_copy(recording, tmp_path)
    else:
        source = tmp_path / "notes.stream"
        source.write_text("not a recording\n")
    result = subprocess.run(CLI + ["replay", str(source), "--bind", "tcp://127.0.0.1:*",
                                   "--no-progress"],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0
    assert result.stdout == ""                    # nothing bound, no endpoint announced
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr         # no traceback
    assert lines[0].startswith("sxdm-stream: error: ") and str(source) in lines[0]
    assert re.search(says, lines[0]), lines[0]
