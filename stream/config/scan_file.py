"""A scan and geometry given in a file, for detectors that send no scan description
(``process --scan-file``): as strict as the configuration, an unknown key is an error naming it.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Mapping

from sxdm_stream.errors import ConfigError
from sxdm_stream.sources.files.masks import read_mask

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load_scan_file(path: str | Path):
    """(ScanDescription, Geometry) from a TOML or JSON file with ``scan`` and ``geometry``
    tables in the layout of their ``describe()`` (what the simulator puts in user_data), and
    optionally ``pixel_mask``: a mask file (.npy, EDF, "FILE.h5:/dataset"; non-zero = excluded,
    a path relative to the scan file) that becomes the geometry's detector mask.

    For detectors that send no scan description. As strict as the configuration
    (:func:`sxdm_stream.config.load_config`): an unknown key is an error naming it;
    ``geometry.wavelength_a``, if given, must agree with ``geometry.energy_ev`` (or stands
    for it).
    """
    import json

    path = Path(path)
    try:
        text = path.read_bytes()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode())
    except OSError as exc:
        raise ConfigError(f"cannot read scan file {path}: {exc.strerror}") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
    try:
        return _scan_file_content(data, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"scan file {path}: {exc}") from None


def _scan_file_keys() -> dict[str, set[str]]:
    """The keys a scan file may hold, per table: those ``describe()`` writes."""
    from sxdm_stream.core.geometry import Detector, Geometry
    from sxdm_stream.core.scan import ScanDescription

    geometry = Geometry(Detector((1, 1), 55e-6, 1.0, (0.0, 0.0)), 8000.0).describe()
    return {"": {"scan", "geometry", "pixel_mask"},
            "scan": {f.name for f in dataclasses.fields(ScanDescription)},
            "geometry": set(geometry), "geometry.detector": set(geometry["detector"])}


def _check_keys(data: Any, table: str, allowed: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{table}] must be a table of keys, got {data!r}")
    for key in data:
        if key not in allowed:
            full = f"{table}.{key}" if table else key
            raise ConfigError(f"unknown key {full}; allowed: {', '.join(sorted(allowed))}")


def _scan_file_content(data: Any, folder: Path):
    from sxdm_stream.core.geometry import HC_EV_ANGSTROM, check_energy_ev, geometry_from_description
    from sxdm_stream.core.scan import ScanDescription

    keys = _scan_file_keys()
    _check_keys(data, "", keys[""])
    for key in ("scan", "geometry"):
        if key not in data:
            raise ConfigError(f"lacks the [{key}] table")
        _check_keys(data[key], key, keys[key])
    geometry = dict(data["geometry"])
    _check_keys(geometry.get("detector", {}), "geometry.detector", keys["geometry.detector"])
    energy = geometry.get("energy_ev")
    if isinstance(energy, (int, float)) and not isinstance(energy, bool):
        check_energy_ev(energy, "geometry.energy_ev")     # the unit hint before any other
    if "wavelength_a" in geometry:
        wavelength = geometry["wavelength_a"]
        if isinstance(wavelength, bool) or not isinstance(wavelength, (int, float)) \
                or not wavelength > 0:
            raise ConfigError(f"geometry.wavelength_a must be a positive number, "
                              f"got {wavelength!r}")
        from_wavelength = HC_EV_ANGSTROM / wavelength
        energy = geometry.setdefault("energy_ev", from_wavelength)
        if isinstance(energy, (int, float)) and abs(from_wavelength - energy) > 1e-4 * energy:
            raise ConfigError(f"geometry.energy_ev {energy} and geometry.wavelength_a {wavelength} "
                              f"disagree ({wavelength} A is {from_wavelength:.1f} eV)")
    mask = None
    if data.get("pixel_mask"):
        if not isinstance(data["pixel_mask"], str):
            raise ConfigError(f"pixel_mask must be a file name, got {data['pixel_mask']!r}")
        mask = read_mask(folder / data["pixel_mask"])
    scan = ScanDescription.from_description(data["scan"])
    geometry = geometry_from_description(geometry, mask)
    return scan, geometry
