"""Recovered strain and tilt against the simulator's ground truth, next to the counting limit.

This is the physics acceptance test of the core: on the default simulated scan the errors
must be within 2x of what counting statistics allow, and within 10 microstrain and 0.002 deg.
Binning must not limit the accuracy: the XSOCS-style histogram COM is reported beside ours.
"""

import numpy as np
import pytest

from sxdm_stream.core.maps import derive_maps, histogram_com
from sxdm_stream.simulators.validation import accuracy_report, format_report


def test_strain_and_tilt_match_ground_truth_within_the_counting_limit(default_scan, capsys):
    report = accuracy_report(default_scan.maps, default_scan.scenario.simulator.truth())
    with capsys.disabled():
        print("\n" + format_report(report))
    assert report["pixels"] > 400                        # the particle fills a good part of the map
    lo, hi = report["true_strain_range"]
    assert hi - lo > 500                                 # a real strain field to recover
    assert report["strain_rms_error"] <= 2 * report["strain_limit"]
    assert report["strain_rms_error"] <= 10.0
    assert report["tilt_rms_error_deg"] <= 2 * report["tilt_limit_deg"]
    assert report["tilt_rms_error_deg"] <= 0.002


def test_tilt_maps_follow_the_true_domains(default_scan):
    maps, truth = default_scan.maps, default_scan.scenario.simulator.truth()
    mask = maps.mask & (truth.particle >= 0)
    alt, az, mean_dir, _ = truth.tilts(mask)
    assert np.nanmax(alt[mask]) > 0.05                   # sub-domains tilted by up to ~0.1 deg
    np.testing.assert_allclose(maps.tilt_altitude[mask], alt[mask], atol=0.002)
    daz = (maps.tilt_azimuth[mask] - az[mask] + 180.0) % 360.0 - 180.0
    strong = alt[mask] > 0.02                            # azimuth is defined where there is tilt
    assert np.max(np.abs(daz[strong])) < 5.0
    np.testing.assert_allclose(maps.mean_direction, mean_dir, atol=1e-5)


def test_counts_are_conserved_between_frames_moments_and_histogram(default_scan):
    acc = default_scan.processor.accumulator
    assert default_scan.processor.counters.processed == default_scan.scenario.scan.n_frames
    # every count in the ROI is either on the grid or off it; the grid covers the ROI's q range
    assert acc.histogram.sum(dtype=np.float64) == pytest.approx(acc.moments[..., 0].sum(), rel=1e-12)


def test_exact_moments_beat_the_binned_xsocs_centroid(default_scan, capsys):
    setup, acc, maps = default_scan.setup, default_scan.processor.accumulator, default_scan.maps
    truth = default_scan.scenario.simulator.truth()
    hist_com = histogram_com(acc.histogram, setup.hits(), setup.grid)
    # the same map derivation applied to the binned centroids
    shifted = acc.moments.sum(axis=0, keepdims=True).copy()
    shifted[0, :, 1:4] = (hist_com - setup.q_ref) * shifted[0, :, :1]
    binned = derive_maps(shifted, setup.q_ref, setup.scan.shape)
    ours = accuracy_report(maps, truth)
    xsocs = accuracy_report(binned, truth)
    with capsys.disabled():
        print(f"\nstrain RMS error: moments {ours['strain_rms_error']:.2f}, "
              f"XSOCS-style binned COM ({'x'.join(map(str, setup.grid.bins))} bins) "
              f"{xsocs['strain_rms_error']:.2f} microstrain")
    assert ours["strain_rms_error"] < xsocs["strain_rms_error"]
