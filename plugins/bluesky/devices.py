"""Simulated SXDM hardware for bluesky: motors, a detector fed by our simulator, and a
read-back of the live processor's results that plans can use to steer.

* :func:`sim_sxdm_devices`: ``ophyd.sim.SynAxis`` motors ``eta`` (degrees), ``piy`` and
  ``pix`` (micrometres) and a :class:`SimulatedSxdmDetector` looking at them;
* :class:`SimulatedSxdmDetector`: an ophyd device whose frame, at each trigger, is the
  simulator's frame (``ScanSimulator.frame``) of the grid point nearest the motors' current
  positions (``scan.pixel_of_position``) and of the nearest simulated rocking angle. With
  ``write_path`` it writes frames to HDF5 like an area detector's HDF5 plugin and emits
  ``resource`` (spec ``AD_HDF5``) / ``datum`` documents instead of the image inline;
* :class:`StreamingSxdmDetector`: the same frames sent over a DECTRIS stream, like a real
  Eiger: the run's documents only record the image number, the detector's series start only
  the correlation id the plan gave it; the processor joins the two planes
  (:mod:`sxdm_stream.pipeline.join`);
* :class:`LiveFeedback`: the live maps as an ophyd readable device (see :mod:`.feedback`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
from ophyd import Component as Cpt, Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import StatusBase

from sxdm_stream import SXDM_KEY, SXDM_METADATA_VERSION, ImageFrame, SeriesEnd, SeriesStart

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
        self._shape = tuple(scenario.geometry.detector.shape)
        self._file: h5py.File | None = None
        self._resource_uid: str | None = None
        self._asset_docs: deque = deque()
        self._point = 0

    # ---- simulation -------------------------------------------------------------------------
    def simulated_frame(self) -> np.ndarray:
        """The frame for the motors' current positions (zeros off the simulated grid)."""
        return simulated_frame(self.scenario, self.motors)

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


def simulated_frame(scenario, motors) -> np.ndarray:
    """The simulator's frame of the grid point nearest the motors' current positions and of
    the nearest simulated rocking angle; zeros off the simulated grid."""
    scan = scenario.scan
    angles = np.asarray(scan.rocking_angles)
    row_um, col_um = (float(motors[m].position) for m in scan.motors)
    eta = float(motors[scan.rocking_axis].position)
    point = scan.pixel_of_position(row_um, col_um)
    angle = int(np.argmin(np.abs(angles - eta)))
    step = float(np.mean(np.abs(np.diff(angles)))) if len(angles) > 1 else np.inf
    if point is None or abs(angles[angle] - eta) > step:
        return np.zeros(tuple(scenario.geometry.detector.shape), dtype=np.uint32)
    return scenario.simulator.frame(angle, point)


class StreamingSxdmDetector(Device):
    """A simulated Eiger-like detector that streams its frames (DECTRIS stream v2).

    Staging arms a series: the start message carries the detector's own fields (image size,
    energy, pixel size, beam centre, distance, pixel mask) and, in ``user_data``, only the
    correlation id written to :attr:`correlation_id` (as one writes an Eiger's
    ``header_appendix``; :func:`~.plans.sxdm_map` does it). Each trigger sends the frame for
    the motors' current positions; the event records only :attr:`image_id`. Unstaging
    ends the series.

    Parameters
    ----------
    scenario : a :class:`sxdm_stream.simulators.scenarios.Scenario` (see
        :class:`SimulatedSxdmDetector`).
    motors : {motor name: ophyd positioner}.
    sender : a :class:`sxdm_stream.sources.dectris.sender.StreamSender` (the bound PUSH socket, format and
        compression). A send waits for the receiver (back-pressure, as a real detector);
        :meth:`stop` (called by the RunEngine on abort) ends the wait.
    """

    image_id = Cpt(Signal, value=-1, kind="normal")
    correlation_id = Cpt(Signal, value="", kind="config")

    def __init__(self, scenario, motors, sender, *, name="sxdm_eiger", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scenario, self.motors, self.sender = scenario, dict(motors), sender
        self._stopped = threading.Event()
        self.series_id = 0
        self._unique: str | None = None
        self._count = 0

    def stage(self):
        geo = self.scenario.geometry
        det = geo.detector
        self.series_id += 1
        self._unique, self._count = uuid.uuid4().hex, 0
        self._stopped.clear()
        correlation_id = self.correlation_id.get() or self._unique
        self._send(SeriesStart(
            series_id=self.series_id, series_unique_id=self._unique, image_shape=tuple(det.shape),
            image_dtype="uint32", energy_ev=geo.energy_ev, wavelength_a=geo.wavelength_a,
            pixel_size_m=det.pixel_size_m, beam_center=tuple(det.beam_center),
            detector_distance_m=det.distance_m, pixel_mask=det.mask,
            user_data={SXDM_KEY: {"version": SXDM_METADATA_VERSION,
                                  "correlation_id": correlation_id}}))
        return super().stage()

    def unstage(self):
        if self._unique is not None:
            try:
                self._send(SeriesEnd(self.series_id, self._unique))
            except RuntimeError as exc:           # stopped: the processor's join timeout ends it
                log.warning("%s", exc)
            self._unique = None
        return super().unstage()

    def trigger(self):
        frame = simulated_frame(self.scenario, self.motors)
        self._send(ImageFrame(series_id=self.series_id, image_id=self._count, data=frame,
                              series_unique_id=self._unique))
        self.image_id.put(self._count)
        self._count += 1
        status = StatusBase()
        status.set_finished()
        return status

    def stop(self, *, success=False):
        self._stopped.set()
        return super().stop(success=success)

    def _send(self, message) -> None:
        send = {SeriesStart: self.sender.send_start, ImageFrame: self.sender.send_image,
                SeriesEnd: self.sender.send_end}[type(message)]
        if not send(message, self._stopped):
            raise RuntimeError(f"{self.name}: stopped while waiting for a receiver of the "
                               f"{type(message).__name__} at {self.sender.endpoint}")


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
