"""Particles followed through a series of maps (issue 13, items 1-2): registration between maps,
stable particle ids, and the events of appearing, disappearing, splitting and merging.

The main series is simulated frame by frame (drift of the sample between maps, sizes and
counts that change, a particle that appears midway and one missing for one map). Splits,
merges, grid changes and the memory's bounds use maps drawn straight from the particles'
intensity fields (no frames): fast, and the label maps are exactly what the test intends.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from sxdm_stream.analysis.particles import ParticleTable, find_particles
from sxdm_stream.analysis.registration import (MapGrid, SampleFrameReference, resample_map,
                                               shift_bilinear, soft_outline)
from sxdm_stream.analysis.scan_analysis import analyse
from sxdm_stream.analysis.tracking import SeriesTracker, TrackingSettings, map_grid
from sxdm_stream.core.accumulate import AccumulationSettings, Accumulator, ScanSetup
from sxdm_stream.core.kernels import N_MOMENTS, S0, S2XX, S2YY, S2ZZ
from sxdm_stream.core.maps import derive_maps
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.simulators.sample import Particle
from sxdm_stream.simulators.scenarios import default_scenario

STEP_UM = 0.25
SHAPE = (24, 28)
N_SCANS = 24
APPEARS_AT = 12          # particle 3 comes into the Bragg condition at this map
MISSING_AT = 18          # particle 1 is out of it at this map only
TRUE_PARTICLES = (
    Particle(center_um=(1.3, 2.3), semi_axes_um=(0.85, 0.7), rotation_deg=20.0,
             d_spacing_a=4.733, seed=1),
    Particle(center_um=(1.4, 5.6), semi_axes_um=(0.75, 0.75), rotation_deg=-30.0,
             d_spacing_a=4.736, seed=2),
    Particle(center_um=(3.8, 3.1), semi_axes_um=(0.8, 0.65), rotation_deg=60.0,
             d_spacing_a=4.730, seed=3),
    Particle(center_um=(3.7, 6.1), semi_axes_um=(0.7, 0.6), rotation_deg=0.0,
             d_spacing_a=4.734, seed=4),
)


def true_drift(n_scans: int, seed: int = 0) -> np.ndarray:
    """(n, 2) drift of the sample since the first map, micrometres: a trend of ~0.05 um per
    map and a jitter of 0.02 um."""
    rng = np.random.default_rng(seed)
    steps = np.array([0.04, -0.05]) + rng.normal(0.0, 0.02, (n_scans - 1, 2))
    return np.cumsum(np.vstack([np.zeros(2), steps]), axis=0)


def particles_at(k: int, drift_um: np.ndarray) -> tuple[list[int], tuple[Particle, ...]]:
    """The particles of map k (which ones, as they are): moved, a little resized, counts +-20%."""
    present, particles = [], []
    for i, p in enumerate(TRUE_PARTICLES):
        if (i == 3 and k < APPEARS_AT) or (i == 1 and k == MISSING_AT):
            continue
        size = 1.0 + 0.04 * np.sin(0.5 * k + i)
        particles.append(replace(p, center_um=tuple(np.add(p.center_um, drift_um)),
                                 semi_axes_um=tuple(np.multiply(p.semi_axes_um, size)),
                                 counts=p.counts * (1.0 + 0.2 * np.sin(0.3 * k + 2 * i))))
        present.append(i)
    return present, tuple(particles)


@pytest.fixture(scope="module")
def tracked_series():
    """The simulated series, accumulated frame by frame, analysed and tracked: per map the
    particles present, the tracker's step and the true drift."""
    drift = true_drift(N_SCANS)
    tracker = SeriesTracker()
    out = []
    for k in range(N_SCANS):
        present, particles = particles_at(k, drift[k])
        scenario = default_scenario(shape=SHAPE, step_um=STEP_UM, n_angles=5,
                                    particles=particles, seed=k)
        setup = ScanSetup(scenario.geometry, scenario.scan,
                          AccumulationSettings(histogram_bins=(0, 0, 0)))
        accumulator = Accumulator(setup)
        for _index, angle, point, frame in scenario.simulator.frames(reuse_buffer=True):
            accumulator.add_frame(frame, angle, point)
        result = analyse(accumulator)
        out.append((present, tracker.update(result.maps, result.particles, scenario.scan)))
    return drift, out


def truth_of(step, present) -> dict[int, int]:
    """Which true particle each id of a step is: the nearest in the sample frame."""
    found = {}
    for pid, centroid in zip(step.particle_ids, step.sample_centroids_um):
        distance = {i: np.linalg.norm(np.array(TRUE_PARTICLES[i].center_um) - centroid)
                    for i in present}
        nearest = min(distance, key=distance.get)
        assert distance[nearest] < 0.3                  # um: the sample-frame centroid is right
        assert nearest not in found
        found[nearest] = int(pid)
    return found


def test_every_particle_keeps_its_id_through_the_series(tracked_series):
    _drift, steps = tracked_series
    ids: dict[int, set[int]] = {}
    for present, step in steps:
        found = truth_of(step, present)
        assert sorted(found) == present                  # every particle is found, once
        for truth, pid in found.items():
            ids.setdefault(truth, set()).add(pid)
    assert all(len(v) == 1 for v in ids.values()), ids   # one id per particle, all along
    assert len(set().union(*ids.values())) == len(TRUE_PARTICLES)


def test_the_new_particle_appears_and_the_missing_one_comes_back(tracked_series):
    _drift, steps = tracked_series
    ids = truth_of(steps[-1][1], steps[-1][0])
    events = [(step.series_index, e.kind, e.particle_ids) for _p, step in steps[1:]
              for e in step.events]
    assert events == [(APPEARS_AT, "appear", (ids[3],)),
                      (MISSING_AT, "disappear", (ids[1],)),
                      (MISSING_AT + 1, "appear", (ids[1],))]
    back = steps[MISSING_AT + 1][1].events[0]
    assert "back after 1 map" in back.message
    first = steps[0][1].events
    assert [(e.kind, e.particle_ids) for e in first] == [("appear", (1, 2, 3))]


def test_shifts_and_drift_are_recovered(tracked_series, capsys):
    drift, steps = tracked_series
    true_px = drift / STEP_UM
    found = np.array([step.registration.drift_px for _p, step in steps])
    shifts = np.array([step.registration.shift_px for _p, step in steps])
    shift_error = shifts[1:] - np.diff(true_px, axis=0)
    drift_error = found - true_px
    with capsys.disabled():
        print(f"\nshift error max {np.abs(shift_error).max():.3f} px, "
              f"RMS {np.sqrt(np.mean(shift_error ** 2)):.3f} px; drift error at the end "
              f"{drift_error[-1].round(3)} px (true drift {true_px[-1].round(2)} px), "
              f"largest {np.abs(drift_error).max():.3f} px")
    assert np.abs(shift_error).max() < 0.2
    assert np.abs(drift_error[-1]).max() < 0.5
    assert np.allclose([s.registration.drift_um for _p, s in steps], found * STEP_UM)
    assert [s.registration.reference for _p, s in steps] == ["first"] + ["running"] * (N_SCANS - 1)
    assert min(s.registration.correlation for _p, s in steps[1:]) > 0.7


def test_step_is_json_as_published(tracked_series):
    _drift, steps = tracked_series
    record = json.loads(json.dumps(steps[APPEARS_AT][1].to_json()))
    assert set(record["registration"]) == {"shift_px", "drift_px", "drift_um", "correlation",
                                           "reference"}
    assert record["ids"] == {str(k): v for k, v in steps[APPEARS_AT][1].ids.items()}
    assert record["events"][0]["kind"] == "appear"
    assert set(record["events"][0]) >= {"kind", "particle_ids", "message"}
    assert json.loads(json.dumps(steps[0][1].to_json()))["registration"]["correlation"] is None


# ---- maps drawn straight from intensity fields ------------------------------------------------

def scan_of(shape=(20, 24), step_um=0.25, origin=(0.0, 0.0)) -> ScanDescription:
    extents = tuple((o, o + (n - 1) * step_um) for o, n in zip(origin, shape))
    return ScanDescription(shape=shape, extents_um=extents, rocking_angles=(10.0,))


def drawn_maps(intensity: np.ndarray, scan: ScanDescription, d_spacing=None):
    """MapSet and ParticleTable of an intensity map (every pixel's peak at q = 2 pi / d along z)."""
    d = np.full(intensity.shape, 4.733) if d_spacing is None else d_spacing
    moments = np.zeros((1, intensity.size, N_MOMENTS))
    moments[0, :, S0] = intensity.ravel()
    for k in (S2XX, S2YY, S2ZZ):
        moments[0, :, k] = 1e-6 * intensity.ravel()
    q_ref = (0.0, 0.0, 2 * np.pi / 4.733)
    # S1z = S0 (qz - q_ref): the pixel's own d
    moments[0, :, S0 + 3] = intensity.ravel() * (2 * np.pi / d.ravel() - q_ref[2])
    maps = derive_maps(moments, q_ref, scan.shape, mask_fraction=0.1)
    return maps, find_particles(maps, scan)


def drawn_intensity(scan: ScanDescription, particles, drift_um=(0.0, 0.0)) -> np.ndarray:
    rows, cols = np.meshgrid(scan.axis_um(0) - drift_um[0], scan.axis_um(1) - drift_um[1],
                             indexing="ij")
    return sum(p.fields(rows, cols)["intensity"] for p in particles)


def disc(row, col, radius=0.6, **kwargs) -> Particle:
    return Particle(center_um=(row, col), semi_axes_um=(radius, radius), **kwargs)


def test_a_split_keeps_the_id_on_the_larger_part_and_a_merge_lists_the_merged_ids():
    scan = scan_of()
    parts = [disc(2.4, 1.8, 0.7), disc(2.4, 3.4, 0.55), disc(4.0, 4.9)]
    bridge = Particle(center_um=(2.4, 2.65), semi_axes_um=(0.2, 0.8), rotation_deg=0.0)
    whole = drawn_intensity(scan, parts + [bridge])
    parts = drawn_intensity(scan, parts)
    tracker = SeriesTracker()
    first = tracker.update(*drawn_maps(whole, scan), scan)
    assert len(first.particle_ids) == 2
    split = tracker.update(*drawn_maps(parts, scan), scan)
    [event] = split.events
    bridged_id = first.particle_ids[0]
    assert event.kind == "split" and event.particle_ids == (bridged_id, 3)
    by_col = dict(zip(split.sample_centroids_um[:, 1].round(1), split.particle_ids))
    assert by_col[1.8] == bridged_id and by_col[3.4] == 3      # the larger part keeps the id
    assert by_col[4.9] == first.particle_ids[1]
    merged = tracker.update(*drawn_maps(whole, scan), scan)
    [event] = merged.events
    assert event.kind == "merge" and event.particle_ids == (bridged_id, 3)
    assert "3 merged into particle 1" in event.message
    assert sorted(merged.particle_ids) == sorted(first.particle_ids)
    assert tracker.remembered_ids == (1, 2)          # a merged id ends


def test_an_even_merge_keeps_the_id_closest_in_d_spacing():
    scan = scan_of()
    apart = [disc(2.4, 2.2, 0.5), disc(2.4, 3.8, 0.5)]
    joined = apart + [Particle(center_um=(2.4, 3.0), semi_axes_um=(0.25, 0.9), rotation_deg=0.0)]
    d = np.where(np.arange(scan.shape[1]) < 12, 4.730, 4.740)[None, :].repeat(scan.shape[0], 0)
    tracker = SeriesTracker()
    first = tracker.update(*drawn_maps(drawn_intensity(scan, apart), scan, d), scan)
    left, right = first.particle_ids                  # left: d = 4.730, right: 4.740
    maps, table = drawn_maps(drawn_intensity(scan, joined), scan, d)
    for mean_d, kept, gone in ((4.7395, right, left), (4.7305, left, right)):
        records = table.records.copy()
        records["mean_d_a"] = mean_d
        trial = SeriesTracker()
        trial.update(*drawn_maps(drawn_intensity(scan, apart), scan, d), scan)
        step = trial.update(maps, ParticleTable(records, table.labels), scan)
        assert list(step.particle_ids) == [kept]
        assert [(e.kind, e.particle_ids) for e in step.events] == [("merge", (kept, gone))]


def test_a_particle_away_longer_than_the_memory_gets_a_new_id():
    scan = scan_of()
    settings = TrackingSettings(memory_scans=2)
    tracker = SeriesTracker(settings)
    both = [disc(1.5, 1.5), disc(3.0, 4.0)]
    first = tracker.update(*drawn_maps(drawn_intensity(scan, both), scan), scan)
    for away in range(3):
        step = tracker.update(*drawn_maps(drawn_intensity(scan, both[:1]), scan), scan)
        assert 2 in tracker.remembered_ids or away == 2
    back = tracker.update(*drawn_maps(drawn_intensity(scan, both), scan), scan)
    assert first.particle_ids.tolist() == [1, 2]
    assert back.particle_ids.tolist() == [1, 3]
    assert "new particle 3" in back.events[0].message
    # away for 2 maps (the memory) the id comes back
    tracker.update(*drawn_maps(drawn_intensity(scan, both[:1]), scan), scan)
    tracker.update(*drawn_maps(drawn_intensity(scan, both[:1]), scan), scan)
    step = tracker.update(*drawn_maps(drawn_intensity(scan, both), scan), scan)
    assert step.particle_ids.tolist() == [1, 3]


def test_memory_stays_bounded_and_reset_starts_again():
    scan = scan_of(shape=(30, 30))
    tracker = SeriesTracker(TrackingSettings(memory_scans=3))
    anchor = disc(3.6, 3.6, 0.9)
    angles = np.linspace(0.0, 2 * np.pi, 12, endpoint=False)
    sizes = []
    for k in range(30):               # a short-lived particle every map, each somewhere else
        visitor = disc(3.6 + 2.3 * np.cos(angles[k % 12]), 3.6 + 2.3 * np.sin(angles[k % 12]),
                       0.6)
        step = tracker.update(*drawn_maps(drawn_intensity(scan, [anchor, visitor]), scan), scan)
        assert sorted(step.particle_ids) == [1, k + 2]           # the anchor, a new id
        sizes.append(len(tracker.remembered_ids))
    assert max(sizes) == 1 + 1 + 3 == sizes[-1]   # anchor, this visitor, 3 lost ones
    tracker.reset()
    assert tracker.maps_seen == 0 and tracker.remembered_ids == ()
    step = tracker.update(*drawn_maps(drawn_intensity(scan, [anchor]), scan), scan)
    assert step.particle_ids.tolist() == [1] and step.registration.reference == "first"


def test_a_new_map_grid_is_registered_in_micrometres():
    particles = [disc(1.6, 1.7, 0.7), disc(3.4, 4.2, 0.6), disc(3.9, 1.5, 0.5)]
    tracker = SeriesTracker()
    coarse = scan_of(shape=(22, 24), step_um=0.25)
    first = tracker.update(*drawn_maps(drawn_intensity(coarse, particles), coarse), coarse)
    drift = np.array([0.12, -0.2])
    fine = scan_of(shape=(30, 36), step_um=0.2, origin=(-0.3, -0.6))
    step = tracker.update(*drawn_maps(drawn_intensity(fine, particles, drift), fine), fine)
    assert [e.kind for e in step.events] == ["grid_changed"]
    assert np.abs(step.registration.drift_um - drift).max() < 0.2 * 0.2
    assert np.allclose(step.registration.drift_px, step.registration.drift_um / 0.2)
    assert sorted(step.particle_ids) == sorted(first.particle_ids)
    back = tracker.update(*drawn_maps(drawn_intensity(coarse, particles, 2 * drift), coarse),
                          coarse)
    assert np.abs(back.registration.drift_um - 2 * drift).max() < 0.2 * 0.25
    assert [e.kind for e in back.events] == ["grid_changed"]


def test_a_failed_match_restarts_the_reference():
    scan = scan_of()
    tracker = SeriesTracker()
    tracker.update(*drawn_maps(drawn_intensity(scan, [disc(1.5, 1.5)]), scan), scan)
    elsewhere = drawn_intensity(scan, [disc(3.6, 4.5, 0.4), disc(1.2, 4.6, 0.5)])
    step = tracker.update(*drawn_maps(elsewhere, scan), scan)
    assert step.registration.reference == "restarted"
    assert np.all(step.registration.drift_um == 0.0)
    assert "reference_restarted" in [e.kind for e in step.events]


# ---- the registration helpers -----------------------------------------------------------------

def test_resample_map_on_the_same_grid_is_a_bilinear_shift():
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(12, 15))
    grid = MapGrid((12, 15), (1.0, -2.0), (0.2, -0.1))
    shift_px = np.array([0.3, -1.6])
    moved = resample_map(image, grid, grid, shift_px * np.array(grid.step_um))
    assert np.allclose(moved, shift_bilinear(image, shift_px))
    labels = np.arange(12 * 15).reshape(12, 15)
    nearest = resample_map(labels, grid, grid, 2 * np.array(grid.step_um), order=0)
    assert nearest.dtype == labels.dtype
    assert np.array_equal(nearest[2:, 2:], labels[:-2, :-2]) and not nearest[:2].any()


def test_sample_frame_reference_recovers_a_drift():
    grid = MapGrid((20, 22), (0.0, 0.0), (0.25, 0.25))
    scan = scan_of(shape=(20, 22))
    particles = [disc(1.6, 1.7, 0.7), disc(3.4, 4.2, 0.6)]
    reference = SampleFrameReference(grid, 4, 0.3)
    reference.add(soft_outline(drawn_intensity(scan, particles), 0.5), grid, (0.0, 0.0))
    drift = np.array([0.17, -0.31])
    moved = soft_outline(drawn_intensity(scan, particles, drift), 0.5)
    found, correlation = reference.register(moved, grid, (0.0, 0.0))
    assert np.abs(found - drift).max() < 0.1 * 0.25 and correlation > 0.95
    assert map_grid(scan) == grid


def test_an_empty_map_carries_the_drift_and_the_ids():
    scan = scan_of()
    particles = [disc(1.6, 1.7, 0.7), disc(3.4, 4.2, 0.6)]
    tracker = SeriesTracker()
    empty = tracker.update(*drawn_maps(np.zeros(scan.shape), scan), scan)
    assert empty.registration.reference == "empty" and len(empty.particle_ids) == 0
    first = tracker.update(*drawn_maps(drawn_intensity(scan, particles), scan), scan)
    assert first.registration.reference == "first"
    drift = np.array([0.1, 0.05])
    tracker.update(*drawn_maps(drawn_intensity(scan, particles, drift), scan), scan)
    dark = tracker.update(*drawn_maps(np.zeros(scan.shape), scan), scan)
    assert dark.registration.reference == "empty"
    assert np.allclose(dark.registration.drift_um, drift, atol=0.03)
    assert [e.kind for e in dark.events] == ["disappear", "disappear"]
    back = tracker.update(*drawn_maps(drawn_intensity(scan, particles, 2 * drift), scan), scan)
    assert back.registration.reference == "running"
    assert np.allclose(back.registration.drift_um, 2 * drift, atol=0.2 * 0.25)
    assert back.particle_ids.tolist() == first.particle_ids.tolist()
    assert [e.kind for e in back.events] == ["appear", "appear"]
    assert json.dumps(dark.to_json()) and json.dumps(empty.to_json())
