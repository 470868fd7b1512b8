"""ROI suggestion on synthetic summed histograms whose peaks are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sxdm_stream.analysis.roi_suggest import format_roi_suggestion, suggest_rois
from sxdm_stream.core.grid import QGrid
from sxdm_stream.errors import ConfigError

GRID = QGrid.from_bounds((-0.01, -0.02, 1.30), (0.01, 0.02, 1.34), (24, 28, 40))


def gaussian_cube(centre, sigma, counts):
    axes = np.meshgrid(*(GRID.centres(a) for a in range(3)), indexing="ij")
    g = np.exp(-0.5 * sum(((x - c) / s) ** 2 for x, c, s in zip(axes, centre, sigma)))
    return counts * g / g.sum()


def two_peaks(shoulder=False):
    h = gaussian_cube((0.001, 0.0, 1.315), (2e-3, 3e-3, 1.5e-3), 2e6)
    h += gaussian_cube((-0.002, 0.004, 1.327), (1.5e-3, 2e-3, 1.2e-3), 5e5)
    if shoulder:    # a weak bump on the flank of the first peak, no valley in between
        h += gaussian_cube((0.001, 0.0, 1.3175), (2e-3, 3e-3, 1.5e-3), 4e5)
    return h + 0.01


@pytest.mark.parametrize("shape", ["box", "ellipsoid"])
def test_two_separated_peaks_get_two_disjoint_rois_around_them(shape):
    s = suggest_rois(two_peaks(), GRID, shape=shape)
    assert len(s.peaks) == 2
    strong, weak = s.peaks
    np.testing.assert_allclose(strong.centre, (0.001, 0.0, 1.315), atol=2e-4)
    np.testing.assert_allclose(weak.centre, (-0.002, 0.004, 1.327), atol=2e-4)
    assert strong.counts > weak.counts
    for p in s.peaks:
        assert p.roi.contains(np.asarray(p.centre))
        assert p.fraction_in_roi > 0.95
    a, b = s.rois
    disjoint = np.any((np.asarray(a.hi) <= np.asarray(b.lo)) | (np.asarray(b.hi) <= np.asarray(a.lo)))
    assert disjoint
    assert strong.d_spacing == pytest.approx(2 * np.pi / np.linalg.norm(strong.centre))


def test_box_faces_lie_on_bin_edges():
    s = suggest_rois(two_peaks(), GRID)
    for roi in s.rois:
        for a in range(3):
            for face in (roi.lo[a], roi.hi[a]):
                k = (face - GRID.edges_lo[a]) / GRID.step[a]
                assert k == pytest.approx(round(k), abs=1e-9)


def test_a_shoulder_is_not_a_peak():
    s = suggest_rois(two_peaks(shoulder=True), GRID)
    assert len(s.peaks) == 2


def test_empty_histogram_and_bad_shape():
    s = suggest_rois(np.zeros(GRID.n_bins), GRID)
    assert s.peaks == () and "no peak" in format_roi_suggestion(s)
    with pytest.raises(ConfigError, match="sphere"):
        suggest_rois(two_peaks(), GRID, shape="sphere")


def test_printout_and_description():
    s = suggest_rois(two_peaks().ravel(), GRID, name_prefix="crystal")
    text = format_roi_suggestion(s)
    assert "2 peak(s)" in text and "crystal0: d = " in text and "crystal1" in text
    d = json.loads(json.dumps(s.describe()))
    assert [p["roi"]["name"] for p in d["peaks"]] == ["crystal0", "crystal1"]
    assert d["peaks"][0]["d_spacing"] == pytest.approx(s.peaks[0].d_spacing)
