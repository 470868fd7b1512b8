"""Inputs a processor must not take on trust (issue 11, items 8 and 9): detector pixels that
hold no count, pixel masks from every source, endpoints, busy ports, values in the wrong unit,
and a scan description that does not fit the frames."""

from __future__ import annotations

import dataclasses
import logging
import socket

import h5py
import numpy as np
import pytest

from sxdm_stream.cli.endpoints import check_bindable, check_endpoint
from sxdm_stream.cli.files import source_options
from sxdm_stream.cli.main import build_parser, main
from sxdm_stream.config import Config
from sxdm_stream.core.accumulate import AccumulationSettings, Accumulator, ScanSetup
from sxdm_stream.core.geometry import Detector, Geometry, geometry_from_description
from sxdm_stream.errors import BadMessageError, ConfigError
from sxdm_stream.messages import ImageFrame, SeriesEnd
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime.processor import (LiveProcessor, LiveSettings, ScanOverride,
                                           setup_for_series)
from sxdm_stream.simulators.sender import series_start
from sxdm_stream.sinks.results import write_results
from sxdm_stream.sources.files.filescan import GeometryOverrides
from sxdm_stream.sources.files.masks import combine_masks, read_mask

TIMEOUT = 120
NODATA = np.iinfo(np.uint32).max                 # an Eiger's 2**32 - 1: "no count here"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("sxdm-stream: error: ")
    return err[0]


# ---- item 8: detector pixels that hold no count ------------------------------------------------
def with_nodata(scenario, frame: np.ndarray, index: int, n: int = 25,
                mask: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """A copy of ``frame`` where ``n`` empty ROI pixels outside ``mask`` (default: the
    detector's) hold the NODATA value, as an Eiger's gaps and defective pixels do without a
    pixel mask; and n."""
    det = scenario.geometry.detector
    r0, r1, c0, c1 = det.roi_bounds
    free = (frame == 0) & ~(det.mask if mask is None else mask)
    free[:r0], free[r1:], free[:, :c0], free[:, c1:] = False, False, False, False
    rows, cols = np.nonzero(free)
    pick = (np.arange(n) * 7919 + index) % len(rows)
    out = frame.copy()
    out[rows[pick], cols[pick]] = NODATA
    return out, n


def test_nodata_pixels_are_left_out_and_counted_and_maps_equal_the_clean_run(
        small_scenario, small_processed, caplog):
    processor = ScanProcessor(ScanSetup(small_scenario.geometry, small_scenario.scan))
    expected = 0
    with caplog.at_level(logging.WARNING, logger="sxdm_stream.pipeline.scan_processor"):
        for index, _a, _p, frame in small_scenario.simulator.frames(reuse_buffer=True):
            if index % 3 == 0:
                frame, n = with_nodata(small_scenario, frame, index)
                expected += n
            assert processor.add(index, frame)
    assert processor.invalid_pixels == expected > 0
    clean = small_processed.accumulator
    np.testing.assert_array_equal(processor.accumulator.moments, clean.moments)
    np.testing.assert_array_equal(processor.accumulator.histogram, clean.histogram)
    warnings = [r.getMessage() for r in caplog.records if "invalid_pixels" in r.getMessage()]
    assert len(warnings) == 1 and "frame 0: 25 detector pixels hold no valid count" in warnings[0]


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_counts_above_max_valid_counts_are_invalid(small_scenario, dtype):
    geometry, scan = small_scenario.geometry, small_scenario.scan
    frame = next(small_scenario.simulator.frames())[3].astype(dtype)
    r0, _, c0, _ = geometry.detector.roi_bounds
    unmasked = np.argwhere(~geometry.detector.roi_mask())[:3] + (r0, c0)
    saturated = frame.copy()
    saturated[tuple(unmasked.T)] = 1001
    limited = Accumulator(ScanSetup(geometry, scan, AccumulationSettings(max_valid_counts=1000)))
    limited.add_frame(saturated, 0, 0)
    clean = Accumulator(ScanSetup(geometry, scan))
    frame[tuple(unmasked.T)] = 0
    clean.add_frame(frame, 0, 0)
    assert limited.invalid_pixels == 3 and clean.invalid_pixels == 0
    np.testing.assert_array_equal(limited.moments, clean.moments)
    if dtype == np.uint16:                        # 2**16 - 1 is invalid without any setting
        frame[tuple(unmasked.T)] = 65535
        clean.add_frame(frame, 0, 1)
        assert clean.invalid_pixels == 3


def test_the_invalid_count_merges_copies_and_reaches_the_results_file(small_scenario, tmp_path):
    setup = ScanSetup(small_scenario.geometry, small_scenario.scan)
    a, b = ScanProcessor(setup), ScanProcessor(setup)
    for index, _a, _p, frame in small_scenario.simulator.frames(reuse_buffer=True):
        if index >= 40:
            break
        (a if index % 2 else b).add(index, with_nodata(small_scenario, frame, index, 4)[0])
    assert a.invalid_pixels == b.invalid_pixels == 80
    assert a.merge(b).invalid_pixels == 160 and a.accumulator.copy().invalid_pixels == 160
    write_results(tmp_path / "r.h5", a.maps(), setup, a.accumulator)
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["entry"].attrs["invalid_pixels"] == 160


def test_the_start_message_limit_is_used_unless_the_user_set_a_lower_one(small_scenario):
    start = dataclasses.replace(series_start(small_scenario, 1, "u", "c"), saturation_counts=5000)
    assert setup_for_series(start, AccumulationSettings(), None).max_valid == 5000
    lower = AccumulationSettings(max_valid_counts=100)
    assert setup_for_series(start, lower, None).max_valid == 100


# ---- item 8: pixel masks from every source -------------------------------------------------------
def test_mask_files_npy_edf_and_hdf5(tmp_path):
    fabio = pytest.importorskip("fabio")
    mask = np.zeros((6, 5), np.uint8)
    mask[1, 2] = mask[4, 0] = 1
    np.save(tmp_path / "m.npy", mask)
    fabio.edfimage.EdfImage(data=mask).write(str(tmp_path / "m.edf"))
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["entry/mask"] = mask * 3
    for spec in ("m.npy", "m.edf", "m.h5:/entry/mask", "m.h5::/entry/mask"):
        got = read_mask(tmp_path / spec)
        assert got.dtype == bool and got.sum() == 2 and got[1, 2] and got[4, 0], spec
    with pytest.raises(ConfigError, match="name its dataset"):
        read_mask(tmp_path / "m.h5")
    with pytest.raises(ConfigError, match="has no dataset /nope"):
        read_mask(f"{tmp_path / 'm.h5'}:/nope")
    with pytest.raises(ConfigError, match="cannot read the mask .*missing.npy"):
        read_mask(tmp_path / "missing.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ConfigError, match="a detector mask is 2D"):
        read_mask(tmp_path / "cube.npy")


def test_masks_are_combined_and_each_source_counted():
    a = np.zeros((4, 4), bool)
    a[0, :] = True
    b = np.zeros((4, 4), bool)
    b[:, 0] = True
    combined = combine_masks((4, 4), {"the detector": a, "the scan file": None, "m.npy": b})
    np.testing.assert_array_equal(combined.mask, a | b)
    assert combined.pixels == {"the detector": 4, "m.npy": 4}
    assert combined.summary() == "7 detector pixels masked (4 from the detector, 4 from m.npy)"
    assert combine_masks((4, 4), {"x": None}).mask is None
    with pytest.raises(ConfigError, match=r"from m.npy has shape \(3, 4\).*\(4, 4\)"):
        combine_masks((4, 4), {"m.npy": np.zeros((3, 4), bool)})


def test_series_setup_ors_the_detector_scan_file_and_user_masks(small_scenario, tmp_path, caplog):
    geometry = small_scenario.geometry
    shape = geometry.detector.shape
    detector_mask = np.asarray(geometry.detector.mask, bool)
    scan_file_mask = np.zeros(shape, bool)
    scan_file_mask[100, 350:360] = True
    user_mask = np.zeros(shape, bool)
    user_mask[120:122, 400] = True
    np.save(tmp_path / "user.npy", user_mask)
    override = ScanOverride(small_scenario.scan, Geometry(
        dataclasses.replace(geometry.detector, mask=scan_file_mask), geometry.energy_ev,
        geometry.diffractometer))
    start = series_start(small_scenario, 3, "u", "c")          # carries the detector's mask
    settings = AccumulationSettings(pixel_mask=str(tmp_path / "user.npy"))
    with caplog.at_level(logging.INFO, logger="sxdm_stream.runtime.settings"):
        setup = setup_for_series(start, settings, override)
    np.testing.assert_array_equal(setup.geometry.detector.mask,
                                  detector_mask | scan_file_mask | user_mask)
    line = next(r.getMessage() for r in caplog.records if "pixels masked" in r.getMessage())
    assert (f"({detector_mask.sum()} from the detector, 10 from the scan file, 2 from "
            f"{tmp_path / 'user.npy'})") in line
    np.save(tmp_path / "user.npy", np.zeros((5, 5)))
    with pytest.raises(BadMessageError, match=r"user.npy has shape \(5, 5\)") as refused:
        setup_for_series(start, settings, override)
    assert refused.value.reason == "size_mismatch"


def test_live_series_with_a_user_mask_and_nodata_pixels(small_scenario, tmp_path):
    """Over the live path: the user's mask is added to the detector's, NODATA pixels are left
    out, and the results file counts them; the maps equal a clean in-process run."""
    geometry, scan = small_scenario.geometry, small_scenario.scan
    user_mask = np.zeros(geometry.detector.shape, bool)
    user_mask[90:100, 350:420] = True
    np.save(tmp_path / "user.npy", user_mask)
    accumulation = AccumulationSettings(pixel_mask=str(tmp_path / "user.npy"))
    settings = Config(accumulation=accumulation, live=LiveSettings(checkpoints=False))
    both = geometry.detector.mask | user_mask
    masked = Geometry(dataclasses.replace(geometry.detector, mask=both), geometry.energy_ev,
                      geometry.diffractometer)
    reference = ScanProcessor(ScanSetup(masked, scan))
    expected = 0
    with LiveProcessor(None, out=tmp_path / "out.h5", settings=settings, max_series=1) as live:
        live.submit(series_start(small_scenario, 5, "run-5", "c"))
        for index, _a, _p, frame in small_scenario.simulator.frames():
            reference.add(index, frame)
            if index % 5 == 0:
                frame, n = with_nodata(small_scenario, frame, index, mask=masked.detector.mask)
                expected += n
            live.submit(ImageFrame(5, index, frame, "run-5"))
        live.submit(SeriesEnd(5, "run-5"))
        assert live.wait(TIMEOUT)
    result = live.results[-1]
    assert result.complete and live.status().processed == scan.n_frames
    with h5py.File(result.path) as f:
        assert f["entry"].attrs["invalid_pixels"] == expected > 0
        np.testing.assert_array_equal(f["entry/accumulator/moments"][()],
                                      reference.accumulator.moments)


def test_process_file_mask_formats_and_the_files_own_mask(tmp_path, small_scenario):
    fabio = pytest.importorskip("fabio")
    geometry = small_scenario.geometry
    mask = np.zeros(geometry.detector.shape, np.int32)
    mask[10, 10:15] = 1
    fabio.edfimage.EdfImage(data=mask).write(str(tmp_path / "m.edf"))
    args = build_parser().parse_args(["process-file", str(tmp_path / "src.h5"), "--out",
                                      str(tmp_path / "o.h5"), "--mask", str(tmp_path / "m.edf")])
    overrides = source_options(args).overrides
    np.testing.assert_array_equal(overrides.mask, mask != 0)
    applied = overrides.apply(geometry)              # added to the file's own mask, not instead
    np.testing.assert_array_equal(applied.detector.mask, geometry.detector.mask | (mask != 0))
    assert GeometryOverrides().apply(geometry).detector.mask is geometry.detector.mask


def test_a_missing_mask_file_stops_the_processor_before_it_starts(tmp_path, capsys):
    code = main(["process", "--connect", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o.h5"),
                 "--mask", str(tmp_path / "nope.npy")])
    assert code == 2
    assert "accumulation.pixel_mask: cannot read the mask" in one_error_line(capsys)


# ---- item 9: endpoints and ports ----------------------------------------------------------------
@pytest.mark.parametrize("endpoint, bind, message", [
    ("127.0.0.1:31001", False, "did you mean tcp://127.0.0.1:31001"),
    ("udp://127.0.0.1:31001", False, "expected|of the form tcp://HOST:PORT"),
    ("tcp://127.0.0.1", False, "not of the form tcp://HOST:PORT"),
    ("tcp://127.0.0.1:http", False, "the port http is not a number"),
    ("tcp://127.0.0.1:70000", False, "the port 70000 is not a number"),
    ("tcp://127.0.0.1:0", False, "the port 0 is not a number from 1"),
    ("tcp://*:5560", False, "'\\*' only binds"),
    ("", False, "needs an endpoint"),
])
def test_malformed_endpoints_are_refused_with_the_expected_form(endpoint, bind, message):
    with pytest.raises(ConfigError, match=message):
        check_endpoint(endpoint, "--connect", bind=bind)


@pytest.mark.parametrize("endpoint, bind", [
    ("tcp://127.0.0.1:31001", False), ("tcp://localhost:5578", False), ("tcp://[::1]:5560", False),
    ("tcp://*:5560", True), ("tcp://127.0.0.1:*", True), ("ipc:///tmp/sxdm", False),
    ("inproc://frames", True), ("tcp://127.0.0.1:0", True),
])
def test_wellformed_endpoints_pass(endpoint, bind):
    assert check_endpoint(endpoint, "--publish", bind=bind) == endpoint


def test_connect_without_a_scheme_exits_2_with_one_line(tmp_path, capsys):
    code = main(["process", "--connect", "127.0.0.1:31001", "--out", str(tmp_path / "o.h5")])
    assert code == 2
    line = one_error_line(capsys)
    assert "tcp://HOST:PORT" in line and "did you mean tcp://127.0.0.1:31001?" in line


@pytest.fixture
def busy_port():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield listener.getsockname()[1]
    listener.close()


@pytest.mark.parametrize("command", [
    ["process", "--connect", "tcp://127.0.0.1:9", "--out", "{out}", "--publish", "{busy}"],
    ["process", "--connect", "tcp://127.0.0.1:9", "--out", "{out}", "--serve", "{busy}"],
    ["simulate", "--bind", "{busy}"],
])
def test_a_busy_port_exits_2_with_one_line(command, busy_port, tmp_path, capsys):
    busy = f"tcp://127.0.0.1:{busy_port}"
    argv = [a.format(out=tmp_path / "o.h5", busy=busy) for a in command]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert busy in line and "cannot bind it" in line
    assert not (tmp_path / "o.h5").exists()


def test_a_free_port_passes_the_bind_check(busy_port):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    check_bindable(f"tcp://127.0.0.1:{port}", "--publish")
    check_bindable("tcp://127.0.0.1:*", "--publish")
    with pytest.raises(ConfigError, match="cannot bind it"):
        check_bindable(f"tcp://127.0.0.1:{busy_port}", "--publish")


# ---- item 9: values in the wrong unit ---------------------------------------------------------
def test_implausible_units_are_refused_with_a_hint(small_scenario):
    det = small_scenario.geometry.detector
    with pytest.raises(ConfigError, match=r"energy_ev 8.33 eV is outside .*did you mean 8330 eV"):
        Geometry(det, 8.33)
    with pytest.raises(ConfigError, match=r"pixel_size_m 55 m .*did you mean 5.5e-05 m \(55 um\)"):
        dataclasses.replace(det, pixel_size_m=55.0)
    with pytest.raises(ConfigError, match=r"distance_m 600 m is outside 0.01-20 m: did you "
                                          r"mean 0.6 m"):
        dataclasses.replace(det, distance_m=600.0)
    for ok in (1000.0, 8330.0, 100000.0):
        Geometry(det, ok)


def test_a_start_message_in_the_wrong_unit_is_refused_with_the_hint(small_scenario):
    start = series_start(small_scenario, 1, "u", "c")
    block = {**start.sxdm, "geometry": {**start.sxdm["geometry"], "energy_ev": 8.33}}
    with pytest.raises(ConfigError, match="did you mean 8330 eV"):
        setup_for_series(dataclasses.replace(start, user_data={"sxdm": block}),
                         AccumulationSettings(), None)
    with pytest.raises(ConfigError, match="did you mean 8330 eV"):
        geometry_from_description(block["geometry"])


@pytest.mark.parametrize("flag, value, hint", [
    ("--energy-ev", "8.33", "--energy-ev 8.33 eV is outside 1000-100000 eV (1-100 keV): did you "
                            "mean 8330 eV (8.33 keV)?"),
    ("--distance-m", "830", "--distance-m 830 m is outside 0.01-20 m: did you mean 0.83 m"),
    ("--pixel-size-m", "75", "--pixel-size-m 75 m is not a pixel size"),
])
def test_file_geometry_flags_in_the_wrong_unit_exit_2(flag, value, hint, tmp_path, capsys):
    code = main(["process-file", str(tmp_path / "scan.h5"), "--out", str(tmp_path / "o.h5"),
                 flag, value])
    assert code == 2
    assert hint in one_error_line(capsys)


# ---- item 9: a scan that does not fit the frames ------------------------------------------------
def test_a_scan_shape_that_does_not_fit_the_frames_is_refused(small_scenario):
    start = series_start(small_scenario, 1, "u", "c")
    wrong = dataclasses.replace(small_scenario.scan, shape=(12, 13),
                                extents_um=((0.0, 1.1), (0.0, 1.2)))
    with pytest.raises(BadMessageError, match=r"announces 2160 images but the scan \(12x13 map, "
                                              r"15 rocking angles.*has 2340") as refused:
        setup_for_series(start, AccumulationSettings(),
                         ScanOverride(wrong, small_scenario.geometry))
    assert refused.value.reason == "frame_count_mismatch"


@pytest.mark.logs_errors
def test_live_a_sheared_scan_file_gives_no_map(small_scenario, tmp_path):
    """A --scan-file whose map is one column wider than what the detector sends: the series
    is refused and its images counted, never written as a (sheared) map."""
    wrong = dataclasses.replace(small_scenario.scan, shape=(12, 13),
                                extents_um=((0.0, 1.1), (0.0, 1.2)))
    override = ScanOverride(wrong, small_scenario.geometry)
    with LiveProcessor(None, out=tmp_path / "out.h5", override=override, max_series=1) as live:
        live.submit(series_start(small_scenario, 2, "run-2", "c"))
        for index, _a, _p, frame in small_scenario.simulator.frames(reuse_buffer=True):
            if index >= 30:
                break
            live.submit(ImageFrame(2, index, frame.copy(), "run-2"))
        live.submit(SeriesEnd(2, "run-2"))
    rejected = live.status().rejected
    assert rejected["frame_count_mismatch"] == 31          # the start and its 30 images
    assert not live.results and not (tmp_path / "out.h5").exists()
