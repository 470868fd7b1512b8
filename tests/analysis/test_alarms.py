"""Operando alarms: each rule fires on the change it names, and only on it."""

from __future__ import annotations

import math

import pytest

from sxdm_stream.analysis.alarms import AlarmSettings, check_alarms
from sxdm_stream.config import config_from_dict
from sxdm_stream.errors import ConfigError


def rows(*particles):
    """Particle rows: (particle_id, {phase_id: (d, fraction)})."""
    return [{"particle_id": pid, "phases": [{"phase_id": k, "d_a": d, "fraction": f}
                                             for k, (d, f) in phases.items()]}
            for pid, phases in particles]


BEFORE = rows((1, {0: (4.8100, 1.0)}), (2, {0: (4.8120, 0.7), 1: (4.6010, 0.3)}),
              (3, {0: (4.8110, 1.0)}))


def test_nothing_changes_nothing_fires():
    assert check_alarms(AlarmSettings(d_change_a_per_scan=1e-3, lag_fraction=0.5), BEFORE, BEFORE) == []


def test_d_jump_fires_above_the_threshold_only():
    after = rows((1, {0: (4.8125, 1.0)}), (2, {0: (4.8121, 0.7), 1: (4.6010, 0.3)}),
                 (3, {0: (4.8110, 1.0)}))
    alarms = check_alarms(AlarmSettings(d_change_a_per_scan=1e-3, fraction_crossings=()), BEFORE, after)
    assert [(a.rule, a.particle_id, a.phase_id) for a in alarms] == [("d_jump", 1, 0)]
    assert alarms[0].value == pytest.approx(0.0025) and "particle 1" in alarms[0].message


def test_fraction_crossing_either_way_and_a_new_phase_starts_at_zero():
    after = rows((1, {0: (4.81, 0.4), 1: (4.60, 0.6)}), (2, {0: (4.81, 0.45), 1: (4.60, 0.55)}),
                 (3, {0: (4.81, 1.0)}))
    fired = {(a.particle_id, a.phase_id, a.message.split(" ")[6])
             for a in check_alarms(AlarmSettings(fraction_crossings=(0.5,)), BEFORE, after)}
    assert fired == {(1, 0, "fell"), (1, 1, "rose"), (2, 0, "fell"), (2, 1, "rose")}


def test_a_new_particle_crosses_nothing():
    after = BEFORE + rows((4, {0: (4.81, 0.1), 1: (4.60, 0.9)}))
    assert check_alarms(AlarmSettings(fraction_crossings=(0.5,)), BEFORE, after) == []


def test_the_laggard_is_named():
    now = rows((1, {0: (4.81, 0.2), 1: (4.60, 0.8)}), (2, {0: (4.81, 0.25), 1: (4.60, 0.75)}),
               (3, {0: (4.81, 0.9), 1: (4.60, 0.1)}))
    alarms = check_alarms(AlarmSettings(fraction_crossings=(), lag_fraction=0.4), None, now)
    assert {(a.particle_id, a.phase_id) for a in alarms} == {(3, 0), (3, 1)}
    assert any("behind" in a.message for a in alarms) and any("ahead" in a.message for a in alarms)


def test_tracker_events_and_drift():
    events = [{"kind": "disappear", "particle_ids": [3], "message": "particle 3 lost"},
              {"kind": "appear", "particle_ids": [4], "message": "particle 4 new"}]
    quiet = check_alarms(AlarmSettings(fraction_crossings=()), BEFORE, BEFORE, events)
    assert [(a.rule, a.particle_id) for a in quiet] == [("disappeared", 3)]
    loud = check_alarms(AlarmSettings(fraction_crossings=(), particle_appears=True,
                                      drift_um_per_scan=0.2), BEFORE, BEFORE, events,
                        shift_um=(0.3, 0.4))
    assert [a.rule for a in loud] == ["disappeared", "appeared", "drift"]
    assert loud[-1].value == pytest.approx(0.5)
    assert loud[-1].to_json()["particle_id"] is None
    assert check_alarms(AlarmSettings(drift_um_per_scan=1.0), None, BEFORE,
                        shift_um=(0.3, 0.4)) == []


def test_json_has_no_nan():
    alarm = check_alarms(AlarmSettings(), None, [], [{"kind": "disappear", "particle_ids": [2],
                                                      "message": "gone"}])[0]
    assert alarm.to_json() == {"rule": "disappeared", "message": "gone", "particle_id": 2,
                               "phase_id": None, "value": None, "threshold": None}
    assert math.isnan(alarm.value)


def test_configuration_is_checked():
    config = config_from_dict({"alarms": {"fraction_crossings": [0.2, 0.8],
                                          "d_change_a_per_scan": 0.005}})
    assert config.alarms.fraction_crossings == (0.2, 0.8)
    with pytest.raises(ConfigError, match="fraction_crossings"):
        config_from_dict({"alarms": {"fraction_crossings": [0.0]}})
    with pytest.raises(ConfigError, match="d_change_a_per_scan"):
        config_from_dict({"alarms": {"d_change_a_per_scan": -1.0}})
