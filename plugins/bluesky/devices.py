"""Simulated SXDM hardware for bluesky: motors, a detector fed by our simulator, and a
read-back of the live processor's results that plans can use to steer.

* :func:`sim_sxdm_devices`: ``ophyd.sim.SynAxis`` motors ``eta`` (degrees), ``piy`` and
  ``pix`` (micrometres) and a :class:`SimulatedSxdmDetector` looking at them;
* :class:`SimulatedSxdmDetector`: an ophyd device whose frame, at each trigger, is the
  simulator's frame (``ScanSimulator.frame``) of the grid point nearest the motors' current
  positions (``scan.pixel_of_position``) and of the nearest simulated rocking angle. With
  ``write_path`` it writes frames to HDF5 like an area detector's HDF5 plugin and emits
  ``resource`` (spec ``AD_HDF5``) / ``datum`` documents instead of the image inline;
* :class:`LiveFeedback`: the live maps as an ophyd readable device (see :mod:`.feedback`).
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import StatusBase

from .feedback import LiveFeedback  # noqa: F401  (re-exported: the devices of this plugin)
from .files import AD_HDF5_DATASET

log = logging.getLogger(__name__)


class SimulatedAxis(SynAxis):
    """An ``ophyd.sim.SynAxis`` that states its engineering units in its data key."""

    def describe(self):
        description = super().describe()
        description[self.readback.name]["units"] = self.egu
        return description


class SimulatedSxdmDetector(Device):
    """A 2D detector whose frames come from an SXDM simulation.

    Parameters
    ----------
    scenario : a :class:`sxdm_stream.simulators.scenarios.Scenario`; its scan defines the
        simulated map grid and the rocking angles the simulator knows (choose them wider and
        finer than any plan will ask for).
    motors : {motor name: ophyd positioner} for the scan's two map motors and rocking axis.
    write_path : directory for HDF5 files (``AD_HDF5`` resource/datum); None: frames inline.
    """

    image = Cpt(Signal, kind="normal")

    def __init__(self, scenario, motors, *, write_path=None, name="sxdm_det", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scenario = scenario
        self.motors = dict(motors)
        self.write_path = Path(write_path) if write_path is not None else None
        self._angles = np.asarray(scenario.scan.rocking_angles)
        self._shape = tuple(scenario.geometry.detector.shape)
        self._file: h5py.File | None = None
        self._resource_uid: str | None = None
        self._asset_docs: deque = deque()
        self._point = 0

    # ---- simulation -------------------------------------------------------------------------
    def simulated_frame(self) -> np.ndarray:
        """The frame for the motors' current positions (zeros off the simulated grid)."""
        scan = self.scenario.scan
        row_um, col_um = (float(self.motors[m].position) for m in scan.motors)
        eta = float(self.motors[scan.rocking_axis].position)
        point = scan.pixel_of_position(row_um, col_um)
        angle = int(np.argmin(np.abs(self._angles - eta)))
        step = float(np.mean(np.abs(np.diff(self._angles)))) if len(self._angles) > 1 else np.inf
        if point is None or abs(self._angles[angle] - eta) > step:
            return np.zeros(self._shape, dtype=np.uint32)
        return self.scenario.simulator.frame(angle, point)

    # ---- bluesky protocol -------------------------------------------------------------------
    def stage(self):
        if self.write_path is not None:
            self._open_file()
        return super().stage()

    def unstage(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        return super().unstage()

    def trigger(self):
        frame = self.simulated_frame()
        if self._file is None:
            self.image.put(frame)
        else:
            self.image.put(self._write(frame))
        status = StatusBase()
        status.set_finished()
        return status

    def describe(self):
        description = super().describe()
        key = self.image.name
        description[key].update(dtype="array", shape=list(self._shape), dtype_numpy="<u4")
        if self.write_path is not None:
            description[key]["external"] = "FILESTORE:"
        return description

    def collect_asset_docs(self):
        """Resource and datum documents of the frames written since the last call."""
        while self._asset_docs:
            yield self._asset_docs.popleft()

    # ---- HDF5 writing, as the area detector HDF5 plugin ----------------------------------------
    def _open_file(self) -> None:
        self.write_path.mkdir(parents=True, exist_ok=True)
        name = f"{self.name}_{uuid.uuid4().hex}.h5"
        self._file = h5py.File(self.write_path / name, "w", libver="latest")
        rows, cols = self._shape
        self._file.create_dataset(AD_HDF5_DATASET, shape=(0, rows, cols), maxshape=(None, rows, cols),
                                  dtype="<u4", chunks=(1, rows, cols))
        self._file.swmr_mode = True           # readers may follow the file while it grows
        self._resource_uid = str(uuid.uuid4())
        self._point = 0
        self._asset_docs.append(("resource", {
            "uid": self._resource_uid, "spec": "AD_HDF5", "root": str(self.write_path),
            "resource_path": name, "resource_kwargs": {"frame_per_point": 1},
            "path_semantics": "posix"}))

    def _write(self, frame: np.ndarray) -> str:
        ds = self._file[AD_HDF5_DATASET]
        ds.resize(self._point + 1, axis=0)
        ds[self._point] = frame
        ds.flush()
        datum_id = f"{self._resource_uid}/{self._point}"
        self._asset_docs.append(("datum", {"datum_id": datum_id, "resource": self._resource_uid,
                                           "datum_kwargs": {"point_number": self._point}}))
        self._point += 1
        return datum_id


def sim_sxdm_devices(scenario, *, write_path=None, detector_name: str = "sxdm_det") -> SimpleNamespace:
    """Simulated motors (named after the scenario's scan, e.g. ``eta``, ``piy``, ``pix``) and
    an SXDM detector looking at them.

    Returns
    -------
    SimpleNamespace with one attribute per motor name and ``det``; ``motors`` maps names to
    motors.
    """
    scan = scenario.scan
    motors = {}
    for axis in (scan.rocking_axis, *scan.motors):
        units = "deg" if axis == scan.rocking_axis else "um"
        motors[axis] = SimulatedAxis(name=axis, egu=units, labels={"motors"})
    det = SimulatedSxdmDetector(scenario, motors, write_path=write_path, name=detector_name,
                                labels={"detectors"})
    return SimpleNamespace(det=det, motors=motors, **motors)
