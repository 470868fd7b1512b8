"""ID01 BLISS scan sets and XSOCS master files written by the simulator: replayed through the
live path and processed directly, they give the same maps, those of the simulation's truth."""

from __future__ import annotations


import h5py
import numpy as np
import pytest
from conftest import replay_live

from sxdm_stream.cli.main import main
from sxdm_stream.errors import ConfigError, IncompatibleFileError
from sxdm_stream.runtime.process_file import process_file_scan
from sxdm_stream.simulators.files import write_id01_scan_set, write_xsocs_master
from sxdm_stream.simulators.validation import accuracy_report
from sxdm_stream.sinks.results import read_maps
from sxdm_stream.sources.files.filescan import GeometryOverrides
from sxdm_stream.sources.files.open import SourceOptions, open_source




@pytest.fixture(scope="module")
def files(small_scenario, tmp_path_factory):
    base = tmp_path_factory.mktemp("files")
    return {"id01": write_id01_scan_set(small_scenario, base / "id01"),
            "xsocs": write_xsocs_master(small_scenario, base / "xsocs")}


def overrides_for(scenario, kind: str) -> GeometryOverrides:
    """What a user gives on the command line: the ROI to process; for XSOCS, which stores no
    mask nor distance, the detector's mask and distance."""
    det = scenario.geometry.detector
    if kind == "id01":
        return GeometryOverrides(roi=det.roi)
    return GeometryOverrides(roi=det.roi, mask=det.mask, distance_m=det.distance_m)


@pytest.mark.parametrize("kind", ["id01", "xsocs"])
def test_the_file_describes_the_simulated_scan(small_scenario, files, kind):
    scan_file = open_source(files[kind], SourceOptions(overrides=overrides_for(small_scenario, kind)))
    scan, geo = small_scenario.scan, small_scenario.geometry
    assert scan_file.kind == kind and scan_file.scan.shape == scan.shape
    assert scan_file.scan.motors == scan.motors and scan_file.scan.rocking_axis == "eta"
    np.testing.assert_allclose(scan_file.scan.rocking_angles, scan.rocking_angles, atol=1e-12)
    assert scan_file.scan.fixed_angles == pytest.approx(scan.fixed_angles, abs=1e-12)
    np.testing.assert_allclose(scan_file.scan.extents_um, scan.extents_um, atol=1e-12)
    assert scan_file.geometry.energy_ev == pytest.approx(geo.energy_ev, rel=1e-12)
    np.testing.assert_allclose(scan_file.geometry.q(scan.angles(3)), geo.q(scan.angles(3)),
                               atol=1e-12)
    np.testing.assert_array_equal(scan_file.geometry.detector.roi_mask(), geo.detector.roi_mask())
    positions = scan_file.positions(scan.n_points + 13)   # rocking angle 1, row 1, col 1
    assert positions["eta"] == scan.rocking_angles[1]
    assert positions["pix"] == pytest.approx(scan.axis_um(1)[1], abs=0.01)


@pytest.mark.parametrize("kind, fmt", [("id01", "cbor"), ("xsocs", "legacy")])
def test_replayed_live_and_processed_directly_give_the_same_true_maps(
        small_scenario, small_processed, files, tmp_path, kind, fmt):
    scan_file = open_source(files[kind], SourceOptions(overrides=overrides_for(small_scenario, kind)))
    live = replay_live(scan_file, tmp_path / "live.h5", fmt)
    direct = process_file_scan(scan_file, tmp_path / "direct.h5", workers=2)
    n = small_scenario.scan.n_frames
    assert live.status().processed == n and live.status().rejected == {}
    assert direct.processor.counters.processed == n and direct.processor.complete
    live_maps, file_maps = read_maps(tmp_path / "live.h5"), read_maps(tmp_path / "direct.h5")
    for name in ("strain", "tilt_altitude", "tilt_azimuth", "d_spacing", "qx", "qy", "qz"):
        np.testing.assert_allclose(file_maps[name], live_maps[name], rtol=1e-9, atol=1e-9,
                                   equal_nan=True, err_msg=name)
    np.testing.assert_array_equal(file_maps["intensity"], live_maps["intensity"])
    # the frames in the files are the simulator's: the maps of the in-process reference
    reference = small_processed.maps()
    np.testing.assert_allclose(direct.maps.strain, reference.strain, atol=1e-6, equal_nan=True)
    report = accuracy_report(direct.maps, small_scenario.simulator.truth())
    assert report["pixels"] > 10
    assert report["strain_rms_error"] <= 2 * report["strain_limit"]
    assert report["tilt_rms_error_deg"] <= 2 * report["tilt_limit_deg"]


def test_xsocs_own_reader_reads_the_simulated_master(small_scenario, files):
    xsocs_h5 = pytest.importorskip("xsocs.io.XsocsH5")
    with xsocs_h5.XsocsH5(str(files["xsocs"])) as master:
        entries = master.entries()
        assert len(entries) == small_scenario.scan.n_angles
        det = small_scenario.geometry.detector
        assert tuple(master.direct_beam(entries[0])) == tuple(det.beam_center)
        assert tuple(master.image_size(entries[0])) == tuple(det.shape)
        assert master.n_images(entries[0]) == small_scenario.scan.n_points
        positions = master.scan_positions(entries[0])
        assert positions.shape == (small_scenario.scan.shape[1], small_scenario.scan.shape[0])
        assert master.positioner(entries[2], "eta") == small_scenario.scan.rocking_angles[2]


def test_cli_process_file_and_export(small_scenario, small_processed, files, tmp_path):
    r0, r1, c0, c1 = small_scenario.geometry.detector.roi
    out = tmp_path / "r.h5"
    code = main(["process-file", str(files["id01"]), "--out", str(out), "--no-progress",
                 "--roi", str(r0), str(r1), str(c0), str(c1),
                 "--export-xsocs", str(tmp_path / "qspace.h5")])
    assert code == 0
    np.testing.assert_allclose(read_maps(out)["strain"], small_processed.maps().strain,
                               atol=1e-6, equal_nan=True)
    with h5py.File(tmp_path / "qspace.h5") as f:
        assert f["Data/qspace"].shape[0] == small_scenario.scan.n_points


# ---- bad input --------------------------------------------------------------------------
def copy_without(src_master, dst, path_to_delete):
    import shutil

    shutil.copytree(src_master.parent, dst)
    master = dst / src_master.name
    with h5py.File(master, "a") as f:
        del f[path_to_delete]
    return master


@pytest.mark.parametrize("kind, missing, says", [
    ("id01", "2.1/measurement/mpx1x4", "frames \\(mpx1x4\\)"),
    ("id01", "1.1/instrument/monochromator", "beam energy"),
    ("id01", "1.1/instrument/mpx1x4/distance", "detector distance"),
])
def test_a_file_that_lacks_a_dataset_is_refused_clearly(files, tmp_path, kind, missing, says):
    master = copy_without(files[kind], tmp_path / "copy", missing)
    with pytest.raises(IncompatibleFileError, match=says):
        open_source(master)


def test_an_xsocs_entry_whose_file_is_gone_is_refused_clearly(files, tmp_path):
    import shutil

    shutil.copytree(files["xsocs"].parent, tmp_path / "copy")
    (tmp_path / "copy" / "sample_3.1.h5").unlink()
    with pytest.raises(IncompatibleFileError, match="3.1"):
        open_source(tmp_path / "copy" / files["xsocs"].name)


def test_a_missing_frame_file_is_refused(files, tmp_path):
    import shutil

    shutil.copytree(files["id01"].parent, tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / "scan0002")
    # HDF5 itself would read zeros in place of the missing frames, without a word
    with pytest.raises(IncompatibleFileError, match="missing.*scan0002"):
        open_source(tmp_path / "copy" / files["id01"].name)


def test_files_that_are_not_sources(files, tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = 1
    with pytest.raises(IncompatibleFileError, match="neither a recording"):
        open_source(plain)
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(IncompatibleFileError, match="HDF5"):
        open_source(tmp_path / "text.h5")
    with pytest.raises(ConfigError, match="positive"):
        open_source(files["id01"], SourceOptions(overrides=GeometryOverrides(energy_ev=-1)))


def test_eiger_style_bitshuffle_lz4_frames_are_read(small_scenario, files, tmp_path):
    """Lima/Eiger files compress frames with the bitshuffle-LZ4 HDF5 filter (hdf5plugin):
    read, they give the maps of the gzip-compressed set, to the bit."""
    bslz4 = write_id01_scan_set(small_scenario, tmp_path / "eiger", compression="bslz4")
    with h5py.File(next((tmp_path / "eiger").glob("scan*/*.h5"))) as f:
        filters = f["entry_0000/instrument/mpx1x4/data"]._filters
        assert "32008" in filters                          # the bitshuffle filter id
    options = SourceOptions(overrides=overrides_for(small_scenario, "id01"))
    compressed = process_file_scan(open_source(bslz4, options), None, workers=2)
    plain = process_file_scan(open_source(files["id01"], options), None, workers=2)
    np.testing.assert_array_equal(compressed.maps.intensity, plain.maps.intensity)
    np.testing.assert_array_equal(compressed.maps.com, plain.maps.com)


def test_bitshuffle_chunks_are_replayed_without_decompressing(small_scenario, small_processed,
                                                             tmp_path, monkeypatch):
    """The bslz4 chunks of an Eiger-style file go on the wire as read (read_direct_chunk,
    through the virtual dataset): the live maps are those of the in-process reference."""
    import sxdm_stream.sources.files.filescan as filescan

    master = write_id01_scan_set(small_scenario, tmp_path / "eiger", compression="bslz4")
    scan_file = open_source(master, SourceOptions(overrides=overrides_for(small_scenario, "id01")))
    decoded = []
    original = filescan.FrameReader.read
    monkeypatch.setattr(filescan.FrameReader, "read",
                        lambda self, *a: decoded.append(a) or original(self, *a))
    live = replay_live(scan_file, tmp_path / "live.h5")
    assert not decoded, "frames were decompressed for the replay"
    assert live.status().processed == small_scenario.scan.n_frames
    (result,) = live.results
    np.testing.assert_array_equal(result.maps.intensity, small_processed.maps().intensity)
