"""The exported qspace.h5, read back by XSOCS' own reader and fitted by XSOCS' own fitter."""

from __future__ import annotations

import numpy as np
import pytest

from sxdm_stream.core.maps import histogram_com
from sxdm_stream.errors import IncompatibleFileError
from sxdm_stream.sinks.results import write_results
from sxdm_stream.sinks.xsocs_export import channels_per_degree, export_results, write_xsocs_qspace

qspace_h5 = pytest.importorskip("xsocs.io.QSpaceH5")
peak_fit = pytest.importorskip("xsocs.process.fit.peak_fit")


@pytest.fixture(scope="module")
def exported(small_processed, tmp_path_factory):
    p = small_processed
    path = tmp_path_factory.mktemp("xsocs") / "qspace.h5"
    write_xsocs_qspace(path, p.accumulator.histogram, p.setup.hits(), p.setup.grid,
                       p.setup.scan, p.setup.geometry.describe())
    return path


def test_xsocs_reads_our_histograms_back(small_processed, exported):
    p = small_processed
    setup, scan = p.setup, p.setup.scan
    bins = tuple(setup.grid.bins)
    with qspace_h5.QSpaceH5(str(exported)) as q:
        assert q.qspace_dimension_names == ("qx", "qy", "qz")
        assert q.qspace_dimensions == bins
        np.testing.assert_array_equal(q.qspace, p.accumulator.histogram.reshape((-1,) + bins))
        np.testing.assert_array_equal(q.histo, setup.hits())
        for axis, values in enumerate(q.qspace_dimension_values):
            np.testing.assert_allclose(values, setup.grid.centres(axis), rtol=0, atol=0)
        np.testing.assert_allclose(q.qspace_sum, p.accumulator.histogram.sum(axis=1), rtol=1e-6)
        rows, cols = np.meshgrid(scan.axis_um(0), scan.axis_um(1), indexing="ij")
        np.testing.assert_array_equal(q.sample_x, cols.ravel())     # XSOCS x: the fast motor
        np.testing.assert_array_equal(q.sample_y, rows.ravel())
        np.testing.assert_array_equal(q.direct_beam, setup.geometry.detector.beam_center)
        det = setup.geometry.detector
        assert q.channels_per_degree[0] == pytest.approx(
            channels_per_degree(det.distance_m, det.pixel_size_m))
        assert q.beam_energy == setup.geometry.energy_ev
        assert len(q.selected_entries) == scan.n_angles and q.shifts is None


def test_xsocs_centroid_fit_agrees_with_our_histogram_com(small_processed, exported):
    p = small_processed
    fitter = peak_fit.PeakFitter(str(exported), fit_type=peak_fit.FitTypes.CENTROID, n_proc=1)
    result = fitter.peak_fit()
    assert fitter.status == fitter.DONE
    ours = histogram_com(p.accumulator.histogram, p.setup.hits(), p.setup.grid)
    theirs = np.stack([result.get_results(axis, "COM") for axis in range(3)], axis=1)
    status = np.stack([result.get_results(axis, "Status") for axis in range(3)], axis=1).all(axis=1)
    counted = p.accumulator.histogram.sum(axis=1) > 0
    np.testing.assert_array_equal(status, counted)
    # float32 cube on their side, float64 sums on ours: agree to a tiny fraction of a bin
    np.testing.assert_allclose(theirs[counted], ours[counted], rtol=0,
                               atol=1e-4 * min(p.setup.grid.step))
    # and near the exact COM from moments (the binning bias is what separates them)
    masked = p.maps().mask.ravel()
    com = p.maps().com.reshape(-1, 3)
    assert np.all(np.abs(theirs[masked] - com[masked]) < np.asarray(p.setup.grid.step))


def test_export_from_a_results_file(small_processed, exported, tmp_path):
    p = small_processed
    results = tmp_path / "r.h5"
    write_results(results, p.maps(), p.setup, p.accumulator, hits=p.setup.hits())
    export_results(results, tmp_path / "q.h5")
    with qspace_h5.QSpaceH5(str(tmp_path / "q.h5")) as a, qspace_h5.QSpaceH5(str(exported)) as b:
        np.testing.assert_array_equal(a.qspace, b.qspace)
        np.testing.assert_array_equal(a.histo, b.histo)
        np.testing.assert_array_equal(a.sample_x, b.sample_x)
    write_results(results, p.maps(), p.setup, p.accumulator)       # during the scan: no hits
    with pytest.raises(IncompatibleFileError, match="hit counts"):
        export_results(results, tmp_path / "q2.h5")
