"""Operando alarms: the thresholds a scientist sets so that the processor says, as soon as a map
is done, that something changed faster than expected. Pure computation, no I/O.

The rules compare a map's per-particle values with the previous map's (particles are matched
by their stable ``particle_id``, phases by their series-wide ``phase_id``: see
:mod:`sxdm_stream.analysis.tracking` and :mod:`sxdm_stream.analysis.phases`):

``d_jump``           a particle's d of one phase changed by more than ``d_change_a_per_scan``
                     since the previous map;
``fraction_crossed`` a particle's fraction of one phase crossed one of ``fraction_crossings``
                     (a phase that was not there counts as fraction 0);
``lagging``          a particle's fraction of a phase differs from the median over the
                     particles of the map by more than ``lag_fraction`` (the laggard, or the
                     one ahead);
``disappeared`` / ``appeared``  the tracker reported it (``particle_disappears`` /
                     ``particle_appears``; the particles of a series' first map are not news);
``drift``            the sample moved more than ``drift_um_per_scan`` between two maps.

Each alarm is an :class:`Alarm`; the record of the map carries them, the processor logs them
and publishes them with the record, and the bluesky feedback device reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sxdm_stream.errors import ConfigError


@dataclass(frozen=True)
class AlarmSettings:
    """Section ``[alarms]`` of the configuration: when an operando map raises an alarm.

    Parameters
    ----------
    d_change_a_per_scan : a particle's d of one phase changing by more than this between two
        maps (Angstrom); None: never.
    fraction_crossings : phase fractions (0 to 1) whose crossing by a particle, either way, is
        an alarm; () for none.
    lag_fraction : a particle's fraction of a phase further than this from the median of the
        map's particles (0 to 1) is an alarm; None: never.
    particle_disappears : a particle that the tracker loses is an alarm.
    particle_appears : a new particle is an alarm.
    drift_um_per_scan : the sample moving more than this between two maps (micrometres);
        None: never.
    """

    d_change_a_per_scan: float | None = None
    fraction_crossings: tuple[float, ...] = (0.5,)
    lag_fraction: float | None = None
    particle_disappears: bool = True
    particle_appears: bool = False
    drift_um_per_scan: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction_crossings", tuple(float(f) for f in self.fraction_crossings))
        if any(not 0.0 < f < 1.0 for f in self.fraction_crossings):
            raise ConfigError(f"alarms.fraction_crossings must lie strictly between 0 and 1, "
                              f"got {list(self.fraction_crossings)}")
        for name in ("d_change_a_per_scan", "lag_fraction", "drift_um_per_scan"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"alarms.{name} must be positive (leave it out for never), "
                                  f"got {value}")


@dataclass(frozen=True)
class Alarm:
    """One alarm of one map.

    ``value`` and ``threshold`` are in the rule's unit (Angstrom for ``d_jump``, a fraction for
    ``fraction_crossed`` and ``lagging``, micrometres for ``drift``, NaN when there is none).
    """

    rule: str
    message: str
    particle_id: int | None = None
    phase_id: int | None = None
    value: float = math.nan
    threshold: float = math.nan

    def to_json(self) -> dict[str, Any]:
        def clean(v: float):
            return None if not math.isfinite(v) else float(v)

        return {"rule": self.rule, "message": self.message, "particle_id": self.particle_id,
                "phase_id": self.phase_id, "value": clean(self.value),
                "threshold": clean(self.threshold)}


def particle_phase_values(particles: Iterable[Mapping]) -> dict[tuple[int, int], tuple[float, float]]:
    """(particle_id, phase_id) -> (d in Angstrom, fraction) of the particle rows of a record
    (each row a mapping with ``particle_id`` and ``phases``: [{phase_id, d_a, fraction}])."""
    values = {}
    for row in particles:
        for phase in row.get("phases") or ():
            values[(int(row["particle_id"]), int(phase["phase_id"]))] = (
                _number(phase.get("d_a")), _number(phase.get("fraction")))
    return values


def check_alarms(settings: AlarmSettings, previous: Sequence[Mapping] | None,
                 current: Sequence[Mapping], events: Iterable[Mapping] = (),
                 shift_um: Sequence[float] | None = None) -> list[Alarm]:
    """The alarms of a map.

    Parameters
    ----------
    settings : the thresholds.
    previous, current : the particle rows of the previous map (None for the first map) and of
        this one: mappings with ``particle_id`` and ``phases`` ([{phase_id, d_a, fraction}]).
    events : the tracker's events of this map ({kind, particle_ids, message}).
    shift_um : how far the sample moved since the previous map (row, col), micrometres.
    """
    alarms: list[Alarm] = []
    now = particle_phase_values(current)
    before = particle_phase_values(previous) if previous is not None else None
    if before is not None:
        alarms += _d_jumps(settings, before, now) + _crossings(settings, before, now)
    alarms += _laggards(settings, now)
    for event in events:
        kind = event.get("kind")
        if (kind == "disappear" and settings.particle_disappears) or \
                (kind == "appear" and settings.particle_appears and before is not None):
            for pid in event.get("particle_ids") or ():
                alarms.append(Alarm("disappeared" if kind == "disappear" else "appeared",
                                    str(event.get("message") or f"particle {pid} {kind}s"),
                                    particle_id=int(pid)))
    if settings.drift_um_per_scan is not None and shift_um is not None:
        moved = float(np.hypot(*shift_um))
        if moved > settings.drift_um_per_scan:
            alarms.append(Alarm("drift", f"the sample moved {moved:.3f} um since the previous "
                                         f"map (alarm above {settings.drift_um_per_scan} um)",
                                value=moved, threshold=settings.drift_um_per_scan))
    return alarms


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float, np.number)) and value is not None \
        else math.nan


def _d_jumps(settings, before, now) -> list[Alarm]:
    limit = settings.d_change_a_per_scan
    if limit is None:
        return []
    out = []
    for (pid, phase), (d, _fraction) in sorted(now.items()):
        if (pid, phase) not in before:
            continue
        change = d - before[(pid, phase)][0]
        if abs(change) > limit:
            out.append(Alarm("d_jump", f"particle {pid}: d of phase {phase} changed by "
                                       f"{change:+.5f} A in one map (alarm above {limit} A)",
                             pid, phase, change, limit))
    return out


def _crossings(settings, before, now) -> list[Alarm]:
    out = []
    seen_before = {pid for pid, _ in before}
    for key in sorted(set(now) | set(before)):
        pid, phase = key
        if not any(p == pid for p, _ in now) or pid not in seen_before:
            continue                                # gone or new: an event of its own
        f0 = before.get(key, (math.nan, 0.0))[1]
        f1 = now.get(key, (math.nan, 0.0))[1]
        if not (math.isfinite(f0) and math.isfinite(f1)):
            continue
        for level in settings.fraction_crossings:
            if (f0 < level) != (f1 < level):
                way = "rose above" if f1 >= level else "fell below"
                out.append(Alarm("fraction_crossed", f"particle {pid}: fraction of phase "
                                                     f"{phase} {way} {level:g} ({f0:.3f} -> {f1:.3f})",
                                 pid, phase, f1, level))
    return out


def _laggards(settings, now) -> list[Alarm]:
    limit = settings.lag_fraction
    if limit is None:
        return []
    particles = sorted({pid for pid, _ in now})
    phases = sorted({phase for _, phase in now})
    out = []
    for phase in phases:
        fractions = {pid: now.get((pid, phase), (math.nan, 0.0))[1] for pid in particles}
        values = np.array([f for f in fractions.values() if math.isfinite(f)])
        if values.size < 3:
            continue                               # a median of two says nothing
        median = float(np.median(values))
        for pid, f in fractions.items():
            if math.isfinite(f) and abs(f - median) > limit:
                way = "behind" if f < median else "ahead of"
                out.append(Alarm("lagging", f"particle {pid}: fraction of phase {phase} "
                                            f"{f:.3f} is {way} the others ({median:.3f})",
                                 pid, phase, f - median, limit))
    return out
