"""q-ROIs: validation, membership, binned moments, and ROI state through merge and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from sxdm_stream.core.accumulate import (AccumulationSettings, Accumulator, ScanSetup,
                                         setup_from_description)
from sxdm_stream.core.grid import QGrid
from sxdm_stream.core.qroi import QRoi, histogram_roi_moments, roi_maps, roi_table
from sxdm_stream.errors import ConfigError
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.sinks.checkpoint import read_checkpoint, write_checkpoint


def test_roi_validation_names_the_problem():
    with pytest.raises(ConfigError, match="must exceed lo"):
        QRoi("a", (0, 0, 1), (1, 1, 1))
    with pytest.raises(ConfigError, match="not one of"):
        QRoi("a", (0, 0, 0), (1, 1, 1), "sphere")
    with pytest.raises(ConfigError, match="name"):
        QRoi("a b", (0, 0, 0), (1, 1, 1))
    with pytest.raises(ConfigError, match="lacks the key 'hi'"):
        QRoi.from_description({"name": "a", "lo": [0, 0, 0]})
    with pytest.raises(ConfigError, match="unique"):
        AccumulationSettings(q_rois=(QRoi("a", (0, 0, 0), (1, 1, 1)),) * 2)


def test_ellipsoid_is_inscribed_in_its_box():
    box = QRoi("b", (0.0, 0.0, 1.0), (2.0, 4.0, 3.0))
    egg = QRoi("e", box.lo, box.hi, "ellipsoid")
    q = np.array([[1.0, 2.0, 2.0], [1.9, 3.9, 2.9], [1.0, 2.0, 2.99], [2.0, 2.0, 2.0], [0.0, 2.0, 2.0]])
    np.testing.assert_array_equal(box.contains(q), [True, True, True, False, True])
    np.testing.assert_array_equal(egg.contains(q), [True, False, True, False, True])
    table = roi_table((box, egg), q_ref=(1.0, 1.0, 1.0))
    np.testing.assert_allclose(table[1], [-1, -1, 0, 1, 3, 2, 0, 1, 1, 1, 0.5, 1])
    assert not table[0, 9:].any()                     # a box has no ellipsoid term


def test_histogram_roi_moments_weigh_bin_centres():
    grid = QGrid.from_bounds((0.0, 0.0, 1.0), (0.3, 0.4, 1.5), (4, 5, 6))
    hist = np.random.default_rng(0).poisson(3.0, (7, grid.n_bins)).astype(np.float32)
    roi = QRoi("r", (0.05, 0.05, 1.1), (0.25, 0.5, 1.35))
    q_ref = np.array([0.1, 0.2, 1.2])
    out = histogram_roi_moments(hist, grid, (roi,), q_ref)
    centres = np.stack(np.meshgrid(*(grid.centres(a) for a in range(3)), indexing="ij"), -1).reshape(-1, 3)
    inside = roi.contains(centres)
    dq = centres[inside] - q_ref
    w = hist[:, inside].astype(float)
    np.testing.assert_allclose(out[0, :, 0, 0], w.sum(axis=1))
    np.testing.assert_allclose(out[0, :, 0, 1:4], w @ dq)
    np.testing.assert_allclose(out[0, :, 0, 9], w @ (dq[:, 2] ** 2))
    maps = roi_maps(out, (roi,), q_ref, (7, 1))
    np.testing.assert_allclose(maps["r"].com[:, 0], q_ref + (w @ dq) / w.sum(axis=1)[:, None])


def test_rois_survive_description_merge_and_checkpoint(small_scenario, tmp_path):
    rois = (QRoi("peak0", (-0.02, -0.02, 1.32), (0.02, 0.02, 1.3285)),
            QRoi("peak1", (-0.02, -0.02, 1.3285), (0.02, 0.02, 1.34), "ellipsoid"))
    setup = ScanSetup(small_scenario.geometry, small_scenario.scan,
                      AccumulationSettings(histogram_bins=(8, 8, 8), q_rois=rois))
    rebuilt = setup_from_description(setup.describe(), small_scenario.geometry.detector.mask)
    assert rebuilt.fingerprint == setup.fingerprint and rebuilt.q_rois == rois
    halves = [ScanProcessor(setup), ScanProcessor(setup)]
    for index, _a, point, frame in small_scenario.simulator.frames(reuse_buffer=True):
        halves[point % 2].add(index, frame)
    whole = halves[0].accumulator.copy().merge(halves[1].accumulator)
    assert whole.roi_moments[..., 0].sum() > 0.5 * whole.moments[..., 0].sum()
    path = tmp_path / "scan.checkpoint.h5"
    write_checkpoint(path, halves[0], 1, None)
    restored = read_checkpoint(path, 0.2, None).processor.accumulator
    np.testing.assert_array_equal(restored.roi_moments, halves[0].accumulator.roi_moments)
    no_rois = ScanSetup(small_scenario.geometry, small_scenario.scan)
    old_state = {k: v for k, v in Accumulator(no_rois).state().items() if k != "roi_moments"}
    assert Accumulator.from_state(no_rois, old_state).roi_moments.size == 0
    with pytest.raises(ConfigError, match="roi_moments"):
        Accumulator.from_state(setup, {k: v for k, v in whole.state().items() if k != "roi_moments"})
