"""Results files: maps, axes and accumulator state round-trip; NeXus structure; atomic rewrite."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from sxdm_stream import __version__
from sxdm_stream.core.accumulate import AccumulationSettings, Accumulator, ScanSetup
from sxdm_stream.core.geometry import Detector, Geometry
from sxdm_stream.core.maps import MAP_FIELDS, derive_maps, map_arrays
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import ConfigError, IncompatibleFileError
from sxdm_stream.sinks import results as hdf5


def make_setup(histogram_bins=(8, 8, 8)) -> ScanSetup:
    det = Detector(shape=(64, 64), pixel_size_m=55e-6, distance_m=0.6, beam_center=(32, 32))
    geo = Geometry(det, 8330.0)
    scan = ScanDescription(
        shape=(4, 5), extents_um=((0, 0.3), (0, 0.4)),
        rocking_angles=tuple(9.0 + 0.02 * np.arange(7)),
        fixed_angles={"phi": 0.0, "nu": 0.0, "delta": 18.0}, scan_id="test-42",
    )
    return ScanSetup(geo, scan, AccumulationSettings(histogram_bins=histogram_bins))


def fill(acc: Accumulator, seed: int = 0) -> Accumulator:
    """Poisson frames whose level grows with the map pixel, so the mask cuts a few pixels."""
    rng = np.random.default_rng(seed)
    scan = acc.setup.scan
    for a in range(scan.n_angles):
        for p in range(scan.n_points):
            frame = rng.poisson(0.5 + p, size=(64, 64)).astype(np.uint32)
            acc.add_frame(frame, a, p)
    return acc


@pytest.fixture(scope="module")
def scan_result():
    setup = make_setup()
    acc = fill(Accumulator(setup))
    maps = derive_maps(acc.moments.copy(), setup.q_ref, setup.scan.shape)
    return setup, acc, maps


@pytest.fixture
def written(tmp_path, scan_result):
    setup, acc, maps = scan_result
    path = tmp_path / "results.h5"
    hdf5.write_results(path, maps, setup, acc, config={"mode": "live", "workers": 2},
                       hits=setup.hits(), extra_attrs={"status": "running", "frames": 140})
    return path


def assert_maps_equal(read: dict, maps) -> None:
    expected = map_arrays(maps)
    assert set(read) == set(expected) == set(hdf5.MAP_NAMES)
    for name, value in expected.items():
        assert read[name].shape == value.shape, name
        np.testing.assert_array_equal(read[name], value, err_msg=name)  # NaN == NaN here


def test_every_map_reads_back_equal(written, scan_result):
    setup, _, maps = scan_result
    read = hdf5.read_maps(written)
    assert_maps_equal(read, maps)
    assert read["mask"].dtype == bool
    assert read["misorientation"].shape == setup.scan.shape + (3,)
    assert read["intensity_per_angle"].shape == (setup.scan.n_angles,) + setup.scan.shape
    # the data are really there: NaN exactly outside the mask, finite inside
    assert 0 < read["mask"].sum() < read["mask"].size
    np.testing.assert_array_equal(np.isfinite(read["strain"]), read["mask"])
    np.testing.assert_allclose(read["qz"], maps.com[..., 2])


def test_nxdata_groups_have_signal_axes_and_units(written, scan_result):
    setup, _, _ = scan_result
    scan = setup.scan
    with h5py.File(written, "r") as f:
        assert f.attrs["NX_class"] == "NXroot" and f.attrs["default"] == "entry"
        assert f.attrs["creator"] == f"sxdm-stream {__version__}"
        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry"
        assert entry.attrs["default"] == "strain"
        for name, (units, _) in MAP_FIELDS.items():
            group = entry[name]
            assert group.attrs["NX_class"] == "NXdata"
            assert group.attrs["signal"] == name
            assert list(group.attrs["axes"]) == ["y", "x"]
            assert group.attrs["title"]
            np.testing.assert_array_equal(group["y"][()], scan.axis_um(0))
            np.testing.assert_array_equal(group["x"][()], scan.axis_um(1))
            assert group["y"].attrs["units"] == group["x"].attrs["units"] == "um"
            assert scan.motors[0] in group["y"].attrs["long_name"]
            assert scan.motors[1] in group["x"].attrs["long_name"]
            assert group[name].attrs.get("units", "") == units
        assert entry["strain/strain"].attrs["units"] == "microstrain"
        assert entry["d_spacing/d_spacing"].attrs["units"] == "angstrom"
        assert entry["mask/mask"].dtype == np.uint8
        assert entry["misorientation/misorientation"].attrs["interpretation"] == "rgba-image"


def test_intensity_per_angle_axes(written, scan_result):
    setup, acc, _ = scan_result
    with h5py.File(written, "r") as f:
        group = f["entry/intensity_per_angle"]
        assert list(group.attrs["axes"]) == ["rocking_angle", "y", "x"]
        np.testing.assert_array_equal(group["rocking_angle"][()], setup.scan.rocking_angles)
        assert group["rocking_angle"].attrs["units"] == "degree"
        per_angle = group["intensity_per_angle"][()]
    np.testing.assert_allclose(per_angle.sum(axis=(1, 2)), acc.moments[:, :, 0].sum(axis=1))


def test_process_and_instrument_describe_the_setup(written, scan_result):
    setup, _, maps = scan_result
    with h5py.File(written, "r") as f:
        proc = f["entry/process"]
        assert proc.attrs["NX_class"] == "NXprocess"
        assert proc["program"].asstr()[()] == "sxdm-stream"
        assert proc["version"].asstr()[()] == __version__
        configuration = json.loads(proc["configuration"].asstr()[()])
        assert json.loads(proc["user_config"].asstr()[()]) == {"mode": "live", "workers": 2}
        np.testing.assert_array_equal(proc["q_ref"][()], setup.q_ref)
        assert proc["d_ref"][()] == maps.d_ref
        np.testing.assert_array_equal(proc["mean_direction"][()], maps.mean_direction)
        np.testing.assert_array_equal(proc["azimuth_reference"][()], maps.azimuth_reference)
        assert "counter-clockwise" in proc["azimuth_reference"].attrs["description"]
        assert proc["mask_fraction"][()] == maps.mask_fraction
        np.testing.assert_array_equal(proc["scan/rocking_angles"][()], setup.scan.rocking_angles)
        np.testing.assert_array_equal(proc["scan/shape"][()], setup.scan.shape)
        np.testing.assert_array_equal(proc["grid/bins"][()], setup.grid.bins)
        geometry = f["entry/instrument/geometry"]
        assert geometry["energy_ev"][()] == 8330.0
        assert geometry["wavelength_a"][()] == pytest.approx(setup.geometry.wavelength_a)
        assert geometry["detector_distance_m"][()] == 0.6
        np.testing.assert_array_equal(geometry["beam_center"][()], [32, 32])
        entry_attrs = dict(f["entry"].attrs)
    assert configuration["scan"] == json.loads(json.dumps(setup.scan.describe()))
    assert configuration["q_ref"] == pytest.approx(setup.q_ref.tolist())
    assert hdf5.read_configuration(written) == configuration
    assert entry_attrs["status"] == "running" and entry_attrs["frames"] == 140


def test_histogram_and_state_read_back(written, scan_result):
    setup, acc, _ = scan_result
    with h5py.File(written, "r") as f:
        qspace = f["entry/qspace"]
        assert qspace.attrs["signal"] == "histogram"
        hist = qspace["histogram"]
        assert hist.shape == (setup.scan.n_points,) + tuple(setup.grid.bins)
        assert hist.chunks == (1,) + tuple(setup.grid.bins)
        assert hist.compression == "gzip"
        for i, axis in enumerate(("qx", "qy", "qz")):
            np.testing.assert_array_equal(qspace[axis][()], setup.grid.centres(i))
            assert qspace[axis].attrs["units"] == "1/angstrom"
    state = hdf5.read_accumulator_state(written)
    assert state["histogram"].sum() == pytest.approx(acc.histogram.sum(), rel=1e-12)
    assert state["histogram"].sum() > 0
    np.testing.assert_array_equal(state["histogram"], acc.histogram)
    np.testing.assert_array_equal(state["moments"], acc.moments)
    np.testing.assert_array_equal(state["frame_count"], acc.frame_count)
    np.testing.assert_array_equal(state["hits"], setup.hits())
    assert state["fingerprint"] == setup.fingerprint
    restored = Accumulator.from_state(setup, state)
    np.testing.assert_array_equal(restored.moments, acc.moments)


def test_moments_only_scan_has_no_qspace(tmp_path):
    setup = make_setup(histogram_bins=(0, 0, 0))
    acc = fill(Accumulator(setup), seed=1)
    maps = derive_maps(acc.moments.copy(), setup.q_ref, setup.scan.shape)
    path = tmp_path / "moments.h5"
    hdf5.write_results(path, maps, setup, acc)
    with h5py.File(path, "r") as f:
        assert "qspace" not in f["entry"]
        assert "user_config" not in f["entry/process"]
    state = hdf5.read_accumulator_state(path)
    assert state["histogram"].shape == (setup.scan.n_points, 0)
    Accumulator.from_state(setup, state)  # shapes fit


def test_maps_only_file_has_no_accumulator_state(tmp_path, scan_result):
    setup, _, maps = scan_result
    path = tmp_path / "maps.h5"
    hdf5.write_results(path, maps, setup)
    assert_maps_equal(hdf5.read_maps(path), maps)
    with pytest.raises(IncompatibleFileError, match="without an accumulator"):
        hdf5.read_accumulator_state(path)


def test_rewrite_is_atomic(tmp_path, scan_result):
    setup, acc, maps = scan_result
    path = tmp_path / "live.h5"
    hdf5.write_results(path, maps, setup, acc, extra_attrs={"status": "running"})
    later = fill(Accumulator(setup), seed=7).merge(acc)
    later_maps = derive_maps(later.moments.copy(), setup.q_ref, setup.scan.shape)
    with h5py.File(path, "r") as reader:  # a viewer holding the file open
        hdf5.write_results(path, later_maps, setup, later, extra_attrs={"status": "complete"})
        # the open handle still sees the complete previous file
        np.testing.assert_array_equal(reader["entry/intensity/intensity"][()], maps.intensity)
        assert reader["entry"].attrs["status"] == "running"
    assert [p.name for p in tmp_path.iterdir()] == ["live.h5"]  # no .tmp left behind
    assert_maps_equal(hdf5.read_maps(path), later_maps)
    with h5py.File(path, "r") as f:
        assert f["entry"].attrs["status"] == "complete"


def test_failed_write_keeps_previous_file(tmp_path, scan_result, monkeypatch):
    setup, acc, maps = scan_result
    path = tmp_path / "live.h5"
    hdf5.write_results(path, maps, setup, acc)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hdf5, "_write_process", broken)
    with pytest.raises(OSError, match="disk full"):
        hdf5.write_results(path, maps, setup, acc)
    assert [p.name for p in tmp_path.iterdir()] == ["live.h5"]
    assert_maps_equal(hdf5.read_maps(path), maps)


def test_foreign_files_are_refused(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["NX_class"] = "NXroot"
        f.create_group("entry").create_dataset("data", data=np.arange(3))
    with pytest.raises(IncompatibleFileError, match="not an sxdm-stream results file"):
        hdf5.read_maps(foreign)
    with pytest.raises(IncompatibleFileError):
        hdf5.read_accumulator_state(foreign)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5 at all")
    with pytest.raises(IncompatibleFileError, match="not an HDF5 file"):
        hdf5.read_maps(text)
    with pytest.raises(FileNotFoundError):
        hdf5.read_maps(tmp_path / "missing.h5")


def test_newer_format_is_refused(written):
    with h5py.File(written, "a") as f:
        f.attrs["sxdm_stream_format"] = hdf5.FORMAT_VERSION + 1
    with pytest.raises(IncompatibleFileError, match="upgrade"):
        hdf5.read_maps(written)


def test_mismatched_inputs_are_refused_before_writing(tmp_path, scan_result):
    setup, acc, maps = scan_result
    other = make_setup(histogram_bins=(4, 4, 4))
    path = tmp_path / "bad.h5"
    with pytest.raises(ConfigError, match="another scan setup"):
        hdf5.write_results(path, maps, other, acc)
    with pytest.raises(ConfigError, match="hits"):
        hdf5.write_results(path, maps, setup, acc, hits=np.zeros((2, 2, 2)))
    with pytest.raises(ConfigError, match="NeXus"):
        hdf5.write_results(path, maps, setup, extra_attrs={"default": "x"})
    assert list(tmp_path.iterdir()) == []
