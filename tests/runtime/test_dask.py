"""process-file on a Dask cluster (a real LocalCluster of two worker processes on loopback)
gives the sums, counts and maps of the plain process-file; a block that cannot be read is
reported with its rows and the result is incomplete, never silently short."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

pytest.importorskip("distributed", reason="process-file --dask needs dask.distributed "
                                          "(pip install 'sxdm-stream[dask]')")

from sxdm_stream.cli.main import main  # noqa: E402
from sxdm_stream.core.accumulate import ScanSetup  # noqa: E402
from sxdm_stream.runtime.distributed import (RowsAccumulator, dask_client, frame_rows,  # noqa: E402
                                             plan_row_blocks, process_file_scan_dask,
                                             rows_per_task_for)
from sxdm_stream.runtime.process_file import process_file_scan  # noqa: E402
from sxdm_stream.simulators.files import write_id01_scan_set, write_xsocs_master  # noqa: E402
from sxdm_stream.sinks.results import read_maps  # noqa: E402
from sxdm_stream.sources.files.filescan import GeometryOverrides  # noqa: E402
from sxdm_stream.sources.files.open import SourceOptions, open_source  # noqa: E402

SUMS = ("moments", "histogram", "frame_count", "roi_moments", "shell_moments")
MAPS = ("intensity", "strain", "tilt_altitude", "tilt_azimuth", "d_spacing", "qx", "qy", "qz")


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each, on loopback."""
    from distributed.utils import _offload_executor

    # Dask's one process-wide (de)serialisation thread, started on first use and kept for
    # the life of the process by design: started here, so that no test sees it as a leak
    _offload_executor.submit(int).result()
    with dask_client("local:2") as c:
        yield c


@pytest.fixture(scope="module")
def files(small_scenario, tmp_path_factory):
    """The small scan as an ID01 scan set whose measured positions stray up to 0.8 of a step
    (frames land on neighbouring map pixels, some in another block of rows, some outside the
    map), and as an XSOCS master file."""
    base = tmp_path_factory.mktemp("dask_files")
    return {"id01": write_id01_scan_set(small_scenario, base / "id01", jitter=0.8),
            "xsocs": write_xsocs_master(small_scenario, base / "xsocs")}


@pytest.fixture(scope="module")
def plain(small_scenario, files, tmp_path_factory):
    """The plain process-file of each file (two threads), written: the reference."""
    out = tmp_path_factory.mktemp("dask_plain")
    return {kind: process_file_scan(open_source(path, options(small_scenario, kind)),
                                    out / f"{kind}.h5", workers=2)
            for kind, path in files.items()}


def options(scenario, kind: str) -> SourceOptions:
    det = scenario.geometry.detector
    if kind == "id01":
        return SourceOptions(overrides=GeometryOverrides(roi=det.roi))
    return SourceOptions(overrides=GeometryOverrides(roi=det.roi, mask=det.mask,
                                                     distance_m=det.distance_m))


def assert_same_results(a, b) -> None:
    """Two processed scans hold the same frames, counts and sums (1e-9 relative)."""
    pa, pb = a.processor, b.processor
    np.testing.assert_array_equal(pa.included, pb.included)
    assert pa.counters.received == pb.counters.received
    assert pa.counters.processed == pb.counters.processed
    assert pa.counters.rejected == pb.counters.rejected
    assert pa.invalid_pixels == pb.invalid_pixels
    for name in SUMS:
        x, y = getattr(pa.accumulator, name), getattr(pb.accumulator, name)
        np.testing.assert_allclose(y, x, rtol=1e-9, atol=0, err_msg=name)


@pytest.mark.parametrize("kind", ["id01", "xsocs"])
def test_dask_gives_the_sums_counts_and_maps_of_process_file(small_scenario, files, plain,
                                                            client, tmp_path, kind):
    source = open_source(files[kind], options(small_scenario, kind))
    done = []
    dask = process_file_scan_dask(source, client, tmp_path / "dask.h5", rows_per_task=5,
                                  progress=done.append)
    assert sum(done) == small_scenario.scan.n_frames
    assert dask.complete == plain[kind].complete and dask.written
    assert_same_results(plain[kind], dask)
    assert_same_files(plain[kind].path, dask.path)


def assert_same_files(a, b) -> None:
    """Two results files hold the same maps (1e-9 relative) and the same accounting."""
    maps_a, maps_b = read_maps(a), read_maps(b)
    for name in MAPS:
        np.testing.assert_allclose(maps_b[name], maps_a[name], rtol=1e-9, atol=1e-12,
                                   equal_nan=True, err_msg=name)
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for attr in ("frames_received", "frames_processed", "frames_rejected", "status"):
            assert fb["entry"].attrs[attr] == fa["entry"].attrs[attr], attr


def test_frames_go_to_the_block_of_the_pixel_their_positions_point_to(small_scenario, files):
    source = open_source(files["id01"], options(small_scenario, "id01"))
    scan = source.scan
    blocks = plan_row_blocks(source, 5)
    assert [b.rows for b in blocks] == [(0, 5), (5, 10), (10, 12)]
    every = np.concatenate([b.frames for b in blocks])
    np.testing.assert_array_equal(np.sort(every), np.arange(scan.n_frames))   # each once
    nominal = np.array([scan.locate(i)[1] // scan.shape[1] for i in range(scan.n_frames)])
    moved = frame_rows(source) // 5 != nominal // 5
    assert moved.any(), "the test file should have frames measured in another block of rows"


def test_a_task_holds_the_sums_of_its_rows_only(small_scenario, files):
    """A task's memory is its sub-map's, and the rows per task do not grow with workers."""
    source = open_source(files["id01"], options(small_scenario, "id01"))
    setup = ScanSetup(source.geometry, source.scan)
    rows, cols = source.scan.shape
    part = RowsAccumulator(setup, (3, 5))
    assert part.histogram.shape == (2 * cols, setup.grid.n_bins)
    assert part.moments.shape[:2] == (source.scan.n_angles, 2 * cols)
    per_task = [rows_per_task_for(setup, n) for n in (1, 2, 4, 64)]
    assert per_task == sorted(per_task, reverse=True) and per_task[-1] >= 1
    assert rows_per_task_for(setup, 1, budget_mib=1e-6) == 1


def corrupt_frame(master, angle: int, point: int) -> None:
    """Overwrite the stored (gzip) chunk of one frame in its Lima file with garbage."""
    lima = master.parent / f"scan{angle + 1:04d}" / "mpx1x4_0000.h5"
    with h5py.File(lima) as f:
        info = f["entry_0000/instrument/mpx1x4/data"].id.get_chunk_info_by_coord((point, 0, 0))
    with open(lima, "r+b") as raw:
        raw.seek(info.byte_offset)
        raw.write((bytes(range(5, 256)) * (info.size // 251 + 1))[:info.size])


@pytest.mark.logs_errors
def test_a_block_that_cannot_be_read_is_reported_and_the_result_is_incomplete(
        small_scenario, files, plain, client, tmp_path, caplog):
    shutil.copytree(files["id01"].parent, tmp_path / "bad")
    bad = tmp_path / "bad" / files["id01"].name
    cols = small_scenario.scan.shape[1]
    corrupt_frame(bad, angle=2, point=7 * cols + 3)            # map row 7: block 6:9
    source = open_source(bad, options(small_scenario, "id01"))
    result = process_file_scan_dask(source, client, tmp_path / "r.h5", rows_per_task=3,
                                    retries=1)
    reference = plain["id01"].processor
    lost_frames = (frame_rows(source) >= 6) & (frame_rows(source) < 9)
    lost_pixels = np.zeros(small_scenario.scan.shape, bool)
    lost_pixels[6:9] = True
    lost_pixels = lost_pixels.ravel()
    assert not result.complete
    np.testing.assert_array_equal(result.processor.included, reference.included & ~lost_frames)
    assert result.processor.counters.processed == \
        reference.counters.processed - (reference.included & lost_frames).sum()
    # every other row holds exactly what the intact file gives
    ref, got = reference.accumulator, result.processor.accumulator
    np.testing.assert_allclose(got.moments[:, ~lost_pixels], ref.moments[:, ~lost_pixels],
                               rtol=1e-9)
    np.testing.assert_allclose(got.histogram[~lost_pixels], ref.histogram[~lost_pixels],
                               rtol=1e-9)
    assert not got.moments[:, lost_pixels].any()
    assert any("map rows 6:9" in r.getMessage() for r in caplog.records
               if r.levelname == "ERROR")
    with h5py.File(tmp_path / "r.h5") as f:
        attrs = f["entry"].attrs
        assert attrs["status"] == "incomplete" and "rows 6:9" in attrs["blocks_failed"]


def test_cli_process_file_on_a_running_scheduler(small_scenario, files, plain, client,
                                                 tmp_path):
    """``--dask tcp://HOST:PORT``: the cluster that ``dask scheduler`` / ``dask worker`` run."""
    r0, r1, c0, c1 = small_scenario.geometry.detector.roi
    # exit 1, as the plain run's: frames measured outside the map make the scan incomplete
    assert main(["process-file", str(files["id01"]), "--out", str(tmp_path / "dask.h5"),
                 "--dask", client.scheduler.address, "--dask-rows", "4", "--no-progress",
                 "--roi", str(r0), str(r1), str(c0), str(c1)]) == 1
    assert_same_files(plain["id01"].path, tmp_path / "dask.h5")


@pytest.mark.parametrize("address, says", [("127.0.0.1:8786", "did you mean tcp://127.0.0.1"),
                                           ("local:0", "local:N needs")])
def test_cli_a_malformed_dask_address_is_one_line(files, tmp_path, capsys, address, says):
    code = main(["process-file", str(files["xsocs"]), "--out", str(tmp_path / "r.h5"),
                 "--dask", address, "--no-progress"])
    assert code == 2 and says in capsys.readouterr().err
