"""The live processor's results as an ophyd readable device, for plans that steer.

:class:`LiveFeedback` reads the maps of the latest run the :class:`~.callback.SxdmCallback`
handed to a :class:`sxdm_stream.runtime.processor.LiveProcessor`. ``trigger()`` waits until the processor
has finished that run (its result is in ``live.results``), so a plan that does
``yield from bps.trigger(feedback, wait=True)`` right after a map reads the map's final values.

Signals (computed over the intensity mask):

* ``mean_d``: mean d-spacing, Angstrom;
* ``strain_spread``: standard deviation of the strain, microstrain;
* ``max_tilt``: largest tilt altitude, degrees;
* ``peak_found``: True when the rocking curve (intensity summed over the masked map, per
  rocking angle) falls below ``tail_fraction`` of its maximum at both ends of the range;
* ``peak_position``: centre of mass of that rocking curve, degrees.

and, from the run's operando record (:attr:`LiveProcessor.last_record`: the particles tracked
through the series, their phases, the alarms of the ``[alarms]`` thresholds):

* ``alarms``: number of alarms the map raised (0: nothing changed faster than expected);
* ``alarm_rules``: their rules, comma-separated (``fraction_crossed,disappeared``...);
* ``alarm_particles``: the particle ids they concern, comma-separated;
* ``n_particles``: particles in the map;
* ``max_phase_fraction``: the largest fraction any particle holds of a phase other than the
  map's first (highest d): how far the most advanced particle has transformed, 0 to 1;
* ``mixed_pixels``: map pixels whose single centre of mass averages two phases.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from ophyd import Component as Cpt, Device, Signal
from ophyd.status import StatusBase

from sxdm_stream import MapSet

log = logging.getLogger(__name__)


def rocking_curve(maps: MapSet) -> np.ndarray:
    """Intensity per rocking angle summed over the masked map pixels."""
    return maps.intensity_per_angle[:, maps.mask].sum(axis=1)


def summarize_maps(maps: MapSet, rocking_angles, tail_fraction: float = 0.1) -> dict:
    """The feedback values of one set of maps (see the module docstring)."""
    mask = maps.mask
    curve = rocking_curve(maps)
    angles = np.asarray(rocking_angles, float)
    top = float(curve.max()) if curve.size else 0.0
    found = bool(top > 0 and curve[0] < tail_fraction * top and curve[-1] < tail_fraction * top)
    return {
        "mean_d": float(np.mean(maps.d_spacing[mask])) if mask.any() else float("nan"),
        "strain_spread": float(np.std(maps.strain[mask])) if mask.any() else float("nan"),
        "max_tilt": float(np.max(maps.tilt_altitude[mask])) if mask.any() else float("nan"),
        "peak_found": found,
        "peak_position": float(np.sum(angles * curve) / np.sum(curve)) if top > 0 else float("nan"),
    }


def summarize_record(record, uid: str | None) -> dict:
    """The operando values of the record of run ``uid`` (see the module docstring); the
    neutral values when the processor made no record for that run."""
    if record is None or record.series_unique_id != uid:
        return {"alarms": 0, "alarm_rules": "", "alarm_particles": "", "n_particles": 0,
                "max_phase_fraction": float("nan"), "mixed_pixels": 0}
    first = max(record.phases, key=lambda p: p["d_a"])["phase_id"] if record.phases else None
    fractions = [p["fraction"] for p in record.particle_phases
                 if p["phase_id"] != first and np.isfinite(p["fraction"])]
    return {"alarms": len(record.alarms),
            "alarm_rules": ",".join(sorted({a.rule for a in record.alarms})),
            "alarm_particles": ",".join(str(i) for i in sorted(
                {a.particle_id for a in record.alarms if a.particle_id is not None})),
            "n_particles": 0 if record.particles is None else len(record.particles),
            "max_phase_fraction": float(max(fractions)) if fractions else 0.0,
            "mixed_pixels": int(record.mixed_pixels)}


class LiveFeedback(Device):
    """Readable summary of the live maps of the latest SXDM run.

    Parameters
    ----------
    live : the :class:`sxdm_stream.runtime.processor.LiveProcessor` being fed.
    callback : the :class:`~.callback.SxdmCallback` feeding it (knows the latest run).
    tail_fraction : threshold of ``peak_found``, a fraction of the rocking curve's maximum.
    timeout : seconds ``trigger`` waits for the processor to finish the latest run.
    """

    mean_d = Cpt(Signal, value=float("nan"), kind="hinted")
    strain_spread = Cpt(Signal, value=float("nan"), kind="hinted")
    max_tilt = Cpt(Signal, value=float("nan"), kind="hinted")
    peak_found = Cpt(Signal, value=False, kind="hinted")
    peak_position = Cpt(Signal, value=float("nan"), kind="hinted")
    alarms = Cpt(Signal, value=0, kind="hinted")
    alarm_rules = Cpt(Signal, value="", kind="normal")
    alarm_particles = Cpt(Signal, value="", kind="normal")
    n_particles = Cpt(Signal, value=0, kind="normal")
    max_phase_fraction = Cpt(Signal, value=float("nan"), kind="hinted")
    mixed_pixels = Cpt(Signal, value=0, kind="normal")

    def __init__(self, live, callback, *, tail_fraction: float = 0.1, timeout: float = 60.0,
                 name: str = "sxdm_feedback", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.live, self.callback = live, callback
        self.tail_fraction, self.timeout = tail_fraction, timeout

    def trigger(self):
        """Wait for the processor to finish the latest run, then update the signals."""
        status = StatusBase()
        uid = self.callback.last_run_uid
        result = self._wait_for_result(uid) if uid is not None else None
        if result is None:
            status.set_exception(TimeoutError(
                f"the live processor did not finish run {uid} within {self.timeout} s"))
            return status
        values = summarize_maps(result.maps, self.callback.last_scan.rocking_angles,
                                self.tail_fraction)
        values.update(summarize_record(self.live.last_record, uid))
        for key, value in values.items():
            getattr(self, key).put(value)
        log.info("live feedback of run %s: %s", uid, values)
        status.set_finished()
        return status

    def _wait_for_result(self, uid: str):
        # the processor's writer thread appends results; poll them with a bounded wait
        deadline = time.monotonic() + self.timeout
        wake = threading.Event()
        while True:
            for result in reversed(self.live.results):
                if result.series_unique_id == uid:
                    return result
            if time.monotonic() > deadline:
                return None
            wake.wait(0.01)
