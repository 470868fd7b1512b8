"""Monitor normalisation of beamline files, through the live path and through process-file.

An ID01 scan set is written by the simulator, then every frame multiplied by a monitor that
varies from frame to frame (as if the beam's flux changed), the monitor stored as a
``measurement/mon`` counter. Normalised by it, replay into the live processor and process-file
give the same maps, those of the unscaled simulation. The monitors are powers of two, so the
normalisation is exact in floating point and intensities can be compared exactly.
"""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import replay_live

from sxdm_stream.cli.main import main
from sxdm_stream.errors import ConfigError, IncompatibleFileError
from sxdm_stream.messages import ImageFrame
from sxdm_stream.runtime.process_file import process_file_scan
from sxdm_stream.runtime.processor import LiveProcessor
from sxdm_stream.simulators.files import write_id01_scan_set
from sxdm_stream.sinks.results import read_maps
from sxdm_stream.sources.files.filescan import GeometryOverrides
from sxdm_stream.sources.files.open import SourceOptions, open_source
from sxdm_stream.sources.recordings.format import RecordingWriter

TIMEOUT = 120
DETECTOR = "mpx1x4"


def monitors(n_angles: int, n_points: int) -> np.ndarray:
    """(angle, point) -> 1, 2 or 4: exact reciprocals, and counts stay integers."""
    angle, point = np.meshgrid(np.arange(n_angles), np.arange(n_points), indexing="ij")
    return 2.0 ** ((angle + point) % 3)


@pytest.fixture(scope="module")
def monitored(small_scenario, tmp_path_factory):
    """The small scenario as an ID01 scan set whose frames are scaled by a ``mon`` counter."""
    directory = tmp_path_factory.mktemp("monitored")
    master = write_id01_scan_set(small_scenario, directory, detector=DETECTOR)
    scan = small_scenario.scan
    mon = monitors(scan.n_angles, scan.n_points)
    with h5py.File(master, "a") as f:
        for angle in range(scan.n_angles):
            number = angle + 1
            f[f"{number}.1/measurement/mon"] = mon[angle]
            lima = directory / f"scan{number:04d}" / f"{DETECTOR}_0000.h5"
            with h5py.File(lima, "a") as g:
                frames = g[f"entry_0000/instrument/{DETECTOR}/data"]
                frames[...] = frames[()] * mon[angle].astype(np.uint32)[:, None, None]
    return master


def options(scenario, monitor: str | None = "mon") -> SourceOptions:
    return SourceOptions(overrides=GeometryOverrides(roi=scenario.geometry.detector.roi),
                         monitor=monitor)



def assert_same_maps(a, b):
    np.testing.assert_array_equal(a["intensity"], b["intensity"])
    for name in ("strain", "tilt_altitude", "tilt_azimuth", "d_spacing", "qx", "qy", "qz"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-9, atol=1e-12, equal_nan=True,
                                   err_msg=name)


def test_the_file_scan_reads_the_monitor_of_every_frame(small_scenario, monitored):
    file_scan = open_source(monitored, options(small_scenario))
    scan = small_scenario.scan
    mon = monitors(scan.n_angles, scan.n_points)
    assert file_scan.monitor(scan.n_points + 13) == mon[1, 13]
    assert open_source(monitored, options(small_scenario, None)).monitor(0) is None


def test_live_replay_and_process_file_give_the_same_normalised_maps(
        small_scenario, small_processed, monitored, tmp_path):
    file_scan = open_source(monitored, options(small_scenario))
    live = replay_live(file_scan, tmp_path / "live.h5")
    direct = process_file_scan(file_scan, tmp_path / "direct.h5", workers=2)
    n = small_scenario.scan.n_frames
    assert live.status().processed == n and live.status().rejected == {}
    assert direct.processor.counters.processed == n
    live_maps = read_maps(tmp_path / "live.h5")
    assert_same_maps(live_maps, read_maps(tmp_path / "direct.h5"))
    # normalised, the scaled frames are the simulator's own: the in-process reference
    reference = small_processed.maps()
    np.testing.assert_array_equal(live_maps["intensity"], reference.intensity)
    np.testing.assert_allclose(live_maps["strain"], reference.strain, atol=1e-6, equal_nan=True)


def test_without_the_monitor_the_scaled_frames_give_other_intensities(
        small_scenario, small_processed, monitored):
    direct = process_file_scan(open_source(monitored, options(small_scenario, None)), workers=1)
    assert not np.array_equal(direct.maps.intensity, small_processed.maps().intensity)


def test_cli_replay_and_process_file_take_the_monitor_option(small_scenario, monitored, tmp_path):
    r0, r1, c0, c1 = (str(v) for v in small_scenario.geometry.detector.roi)
    roi = ["--roi", r0, r1, c0, c1]
    assert main(["process-file", str(monitored), "--out", str(tmp_path / "direct.h5"),
                 "--monitor", "mon", "--no-progress", *roi]) == 0
    with subprocess.Popen([sys.executable, "-m", "sxdm_stream.cli", "replay", str(monitored),
                           "--bind", "tcp://127.0.0.1:*", "--rate", "max", "--monitor", "mon",
                           "--no-progress", *roi],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as rep:
        try:
            endpoint = rep.stdout.readline().split(": ", 1)[1].strip()
            with LiveProcessor(endpoint, out=tmp_path / "live.h5", max_series=1) as live:
                assert live.wait(TIMEOUT)
            assert rep.wait(TIMEOUT) == 0
        finally:
            if rep.poll() is None:
                rep.kill()
    assert live.status().processed == small_scenario.scan.n_frames
    assert_same_maps(read_maps(tmp_path / "live.h5"), read_maps(tmp_path / "direct.h5"))


def test_a_missing_monitor_counter_is_refused_naming_it(small_scenario, monitored):
    with pytest.raises(IncompatibleFileError, match="no monitor counter 'i0'.*'mon'"):
        open_source(monitored, options(small_scenario, "i0"))


def test_a_recording_takes_no_monitor_counter(tmp_path):
    with RecordingWriter(tmp_path / "run.stream"):
        pass
    with pytest.raises(ConfigError, match="recording"):
        open_source(tmp_path / "run.stream", SourceOptions(monitor="mon"))


@pytest.mark.parametrize("user_data, expected", [
    (None, None),
    ({"sxdm": {"positions": {"pix": 1.0}}}, None),
    ({"sxdm": {"monitor": 2}}, 2.0),
    ({"sxdm": {"positions": {"pix": 1.0}, "monitor": 1.5e5}}, 1.5e5),
])
def test_an_image_carries_its_monitor_in_the_sxdm_block(user_data, expected):
    assert ImageFrame(1, 0, np.zeros((2, 2)), user_data=user_data).monitor == expected


def test_a_monitor_that_is_not_a_number_reads_as_nan_to_be_rejected():
    for value in ("high", True, [1.0]):
        monitor = ImageFrame(1, 0, np.zeros((2, 2)), user_data={"sxdm": {"monitor": value}}).monitor
        assert np.isnan(monitor)
