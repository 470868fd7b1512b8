"""NeXus and HDF5 helpers shared by every file we write: atomic replacement, map ``NXdata``
groups with their axes and units, JSON of numpy values.
"""

from __future__ import annotations

import contextlib
import os

import h5py
import numpy as np

from sxdm_stream.core.maps import MAP_FIELDS, MapSet, map_arrays
from sxdm_stream.core.scan import ScanDescription


@contextlib.contextmanager
def atomic_h5(path):
    """An HDF5 file open for writing at ``path + ".tmp"``, moved over ``path`` when the block
    ends without error (removed otherwise): readers see the old file or the new, never half."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _fsync(path: str) -> None:
    # the rename must not reach the disk before the data does (a crash would leave an empty file)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def json_default(value):
    """``json.dumps`` default for numpy scalars and arrays (shared by results and checkpoints)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_map_groups(entry: h5py.Group, maps: MapSet, scan: ScanDescription) -> None:
    """One NXdata group per map of ``maps`` under ``entry`` (and intensity_per_angle)."""
    arrays = map_arrays(maps)
    for name, (units, title) in MAP_FIELDS.items():
        data = arrays[name].astype(np.uint8) if name == "mask" else arrays[name]
        group = create_map_nxdata(entry, name, data, units, title, scan)
        if name == "misorientation":
            # NeXus' value for a colour image; silx accepts a last dimension of 3 or 4
            group[name].attrs["interpretation"] = "rgba-image"
    per_angle = create_map_nxdata(entry, "intensity_per_angle", arrays["intensity_per_angle"],
                               MAP_FIELDS["intensity"][0], "intensity at each rocking angle", scan)
    per_angle.attrs["axes"] = ["rocking_angle", "y", "x"]
    per_angle.attrs.update(rocking_angle_indices=0, y_indices=1, x_indices=2)
    per_angle["intensity_per_angle"].attrs["interpretation"] = "image"
    angle = per_angle.create_dataset("rocking_angle", data=np.asarray(scan.rocking_angles))
    angle.attrs.update(units="degree", long_name=f"{scan.rocking_axis} (degree)")


def create_map_nxdata(parent: h5py.Group, name: str, data: np.ndarray, units: str, title: str,
                      scan: ScanDescription) -> h5py.Group:
    """NXdata ``parent/name`` with signal ``name`` on the map axes y (rows) and x (cols), in um."""
    group = parent.create_group(name)
    group.attrs.update(NX_class="NXdata", signal=name, axes=["y", "x"], y_indices=0,
                       x_indices=1, title=title)
    signal = group.create_dataset(name, data=data)
    signal.attrs["long_name"] = f"{title} ({units})" if units else title
    if units:
        signal.attrs["units"] = units
    for axis, dim in (("y", 0), ("x", 1)):
        ds = group.create_dataset(axis, data=scan.axis_um(dim))
        ds.attrs.update(units="um", long_name=f"{scan.motors[dim]} (um)")
    return group
