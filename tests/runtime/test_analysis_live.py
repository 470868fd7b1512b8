"""Issue 7 through the live processor: drift correction, q-ROIs (suggested on one scan, used on
the next), particles and Gaussian fits land in the results file and in the snapshots."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest

from sxdm_stream.analysis.drift import DriftSettings
from sxdm_stream.analysis.scan_analysis import AnalysisSettings, analyse
from sxdm_stream.cli.main import main
from sxdm_stream.config import Config, FitSettings, LiveSettings, load_config
from sxdm_stream.core.accumulate import AccumulationSettings
from sxdm_stream.messages import ImageFrame, SeriesEnd
from sxdm_stream.runtime.processor import (LiveProcessor, analysis_arrays,
                                           analysis_header)
from sxdm_stream.simulators.analysis_scenarios import drifting_scenario, truth_at_angle
from sxdm_stream.simulators.scenarios import two_particle_scenario
from sxdm_stream.simulators.sender import series_start
from sxdm_stream.simulators.validation import accuracy_report
from sxdm_stream.sinks.results import read_maps
from sxdm_stream.sinks.results_analysis import read_drift, read_particles, read_roi_maps


def run_live(scenario, out, settings: Config, keep: list | None = None):
    """Submit one simulated scan; ``keep`` receives the processor."""
    live = LiveProcessor(None, out=out, settings=settings, max_series=1).start()
    if keep is not None:
        keep.append(live)
    try:
        live.submit(series_start(scenario, 1, "s1", "c1"))
        for index, _, _, frame in scenario.simulator.frames():
            live.submit(ImageFrame(1, index, frame, "s1"))
        live.submit(SeriesEnd(1, "s1"))
        assert live.wait(120), live.status()
    finally:
        live.stop()
    (result,) = live.results
    assert result.complete and result.analysis is not None
    return live, result


def test_rois_suggested_on_one_scan_separate_two_particles_on_the_next(tmp_path, capsys):
    scenario = two_particle_scenario(shape=(20, 20), n_angles=17)
    truth = scenario.simulator.truth()
    first_settings = Config(live=LiveSettings(checkpoints=False))
    _, first = run_live(scenario, tmp_path / "first.h5", first_settings)
    suggestion = first.analysis.roi_suggestion
    assert suggestion is not None and len(suggestion.rois) == 2
    with h5py.File(tmp_path / "first.h5") as f:
        stored = json.loads(f["entry/roi_suggestion"][()])
        assert "peak" in f["entry/roi_suggestion"].attrs["text"]
    assert len(stored["peaks"]) == 2
    main(["rois", str(tmp_path / "first.h5")])          # what a user pastes into the config
    printed = capsys.readouterr().out
    config_file = tmp_path / "next.toml"
    config_file.write_text(printed.split("(paste into the --config TOML file):", 1)[1])
    rois = load_config(config_file).accumulation.q_rois
    assert rois == suggestion.rois
    second_settings = dataclasses.replace(first_settings, accumulation=AccumulationSettings(
        q_rois=rois))
    live, second = run_live(scenario, tmp_path / "second.h5", second_settings)
    by_roi = read_roi_maps(tmp_path / "second.h5")
    assert set(by_roi) == {"peak0", "peak1"}
    found = []
    for name, maps in by_roi.items():
        mask = maps["mask"]
        particle = int(np.argmax([np.sum(mask & np.isfinite(d)) for d in truth.particle_d_spacing]))
        measured = float(np.nanmean(maps["d_spacing"][mask]))
        expected = truth.particle_mean_d(particle, mask)
        assert abs(measured - expected) < 1e-4, (name, measured, expected)
        np.testing.assert_allclose(maps["d_spacing"], second.analysis.roi_maps[name].d_spacing,
                                   equal_nan=True)
        found.append(particle)
    assert sorted(found) == [0, 1]
    header = analysis_header(second.analysis)
    json.dumps(header)                                # what a snapshot carries is JSON
    assert set(header["q_rois"]) == {"peak0", "peak1"}
    arrays = analysis_arrays(second.analysis)
    assert arrays["roi.peak0.d_spacing"].shape == (20, 20) and "particle_labels" in arrays


def drift_um(n_angles):
    k = np.arange(n_angles) - n_angles // 2
    return np.stack([0.02 * k, -0.012 * k], axis=1)        # 0.2 and 0.12 px per angle


def test_live_drift_correction_is_written_and_beats_the_uncorrected_maps(tmp_path):
    n_angles = 21
    scenario = drifting_scenario(drift_um(n_angles), shape=(32, 32), n_angles=n_angles)
    settings = Config(live=LiveSettings(checkpoints=False), drift=DriftSettings(mode="auto"))
    _, result = run_live(scenario, tmp_path / "drift.h5", settings)
    drift = read_drift(tmp_path / "drift.h5")
    ref = drift["reference_angle"]
    truth_px = (drift_um(n_angles) - drift_um(n_angles)[ref]) / 0.1
    confident = drift["confident"]
    assert confident.sum() >= n_angles // 2
    error = np.abs(drift["shifts_px"] - truth_px)[confident]
    assert error.max() < 0.15, error
    # the live maps are the offline drift correction of the same sums (tests/analysis/test_drift.py
    # checks that correction against the core accuracy on the full-size scan)
    stored = stored_accumulator(tmp_path / "drift.h5", scenario)
    offline = analyse(stored, AnalysisSettings(drift=DriftSettings(mode="auto")), final=True)
    np.testing.assert_allclose(result.maps.strain, offline.maps.strain, rtol=1e-9, atol=1e-9,
                               equal_nan=True)
    truth = truth_at_angle(scenario.simulator, ref)     # the sample as at the reference angle
    corrected = accuracy_report(result.maps, truth)
    uncorrected = accuracy_report(analyse(stored, AnalysisSettings(), final=True).maps, truth)
    assert uncorrected["strain_rms_error"] > 3 * corrected["strain_rms_error"], \
        (corrected, uncorrected)
    np.testing.assert_allclose(read_maps(tmp_path / "drift.h5")["strain"], result.maps.strain,
                               equal_nan=True)


def stored_accumulator(path, scenario):
    """The sums of a results file, as the processor had them (uncorrected)."""
    from sxdm_stream.core.accumulate import Accumulator, setup_from_description
    from sxdm_stream.sinks.results import read_accumulator_state, read_configuration

    setup = setup_from_description(read_configuration(path), scenario.geometry.detector.mask)
    return Accumulator.from_state(setup, read_accumulator_state(path))


def test_particles_and_fits_in_the_results_file(small_scenario, tmp_path):
    settings = Config(live=LiveSettings(checkpoints=False), fits=FitSettings(enabled=True))
    _, result = run_live(small_scenario, tmp_path / "fits.h5", settings)
    particles = read_particles(tmp_path / "fits.h5")
    assert len(particles) == 1
    maps = read_maps(tmp_path / "fits.h5")
    assert particles["area_px"][0] <= maps["mask"].sum()
    assert particles["mean_d_a"][0] == pytest.approx(np.nanmean(maps["d_spacing"][maps["mask"]]),
                                                      abs=1e-6)
    with h5py.File(tmp_path / "fits.h5") as f:
        fit_d = f["entry/fits/fit_d_spacing/fit_d_spacing"][()]
    mask = maps["mask"] & np.isfinite(fit_d)
    assert mask.sum() > 0.8 * maps["mask"].sum()
    # binned Gaussian centres against the exact COM: same d within a fraction of the bin size
    assert np.nanmedian(np.abs(fit_d[mask] - maps["d_spacing"][mask])) < 2e-3


@pytest.mark.logs_errors
def test_a_failing_analysis_never_stops_the_processor_nor_loses_the_sums(small_scenario,
                                                                        tmp_path, monkeypatch):
    import sxdm_stream.runtime.snapshots as live_snapshots
    import sxdm_stream.runtime.writer as live_writer

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in the analysis")

    monkeypatch.setattr(live_snapshots, "analyse", broken)       # snapshots
    monkeypatch.setattr(live_writer, "analyse", broken)          # results files
    kept = []
    with pytest.raises(AssertionError):                  # run_live expects an analysis
        run_live(small_scenario, tmp_path / "sums.h5", Config(live=LiveSettings(checkpoints=False)), kept)
    live = kept[0]
    (result,) = live.results
    assert result.complete and result.analysis is None
    assert live.status().processed == small_scenario.scan.n_frames
    assert live.snapshot_errors >= 1 and live.write_errors >= 1
    maps = read_maps(tmp_path / "sums.h5")                # the plain maps were written
    assert np.isfinite(maps["strain"][maps["mask"]]).all()
