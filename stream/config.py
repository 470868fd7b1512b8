"""The one typed configuration object, loaded from TOML and validated when loaded.

Every section is a frozen dataclass; an unknown key, a value of the wrong type or out of its
allowed range raises :class:`ConfigError` naming the key (``accumulation.threshold``) and what
is allowed. Command-line flags override values through :func:`override`.

Example (every key optional)::

    [simulation]
    detector = "maxipix_2x2"        # or "eiger2_500k"
    shape = [40, 40]                 # map rows, cols
    step_um = 0.1
    n_angles = 31
    rocking_half_range_deg = 0.3
    counts = 2e5                     # integrated counts at the particle's thickest point
    background_rate = 2e-5           # counts per pixel per frame
    drift_um_per_angle = [0.0, 0.0]
    seed = 0

    [accumulation]
    threshold = 0                    # counts below are ignored
    histogram_bins = "auto"          # or [bx, by, bz], or [0, 0, 0] for moments only
    histogram_max_bins = 32
    histogram_dtype = "float32"
    histogram_budget_mib = 2048
    pixel_mask = ""                  # pixels to exclude besides the detector's own mask: .npy,
                                     # EDF or "FILE.h5:/dataset", non-zero = excluded; a path
                                     # relative to this file (process --mask overrides it)
    # max_valid_counts = 1e6         # counts above are invalid: left out and counted (counts
                                     # of 2**bits - 1 always are; the detector's own limit too)

    [[accumulation.q_rois]]          # q-space ROIs, each with its own exact moments and maps
    name = "peak0"                   # (sxdm_stream.analysis.roi_suggest.suggest_rois prints suggestions)
    lo = [-0.005, -0.006, 1.3264]    # 1/Angstrom, sample frame
    hi = [0.005, 0.007, 1.3311]
    shape = "box"                    # or "ellipsoid" (inscribed in the box)

    [maps]
    mask_fraction = 0.2
    d_ref_a = 0                      # 0: the mean d over the mask

    [output]
    directory = "results"

    [drift]                          # sample drift between rocking angles (sxdm_stream.analysis.drift)
    mode = "off"                     # "off", "auto" (from the per-angle intensity maps), "given"
    reference_angle = -1             # -1: the angle with the most intensity
    shifts_um = []                   # mode "given": [[row, col], ...] um, one pair per angle
    min_intensity_fraction = 0.05    # weaker angles take interpolated shifts
    min_correlation = 0.5
    outline_fraction = 0.003
    smoothing_angles = 5             # local straight-line fit over this many angles; 1 = none
    drop_incomplete = true

    [particles]                      # per-particle table (sxdm_stream.analysis.particles)
    min_pixels = 10                  # smallest particle, map pixels
    connectivity = 1                 # 1: pixels sharing an edge; 2: corners too
    domain_misorientation_deg = 0.01 # neighbours differing more are in different sub-domains
    min_domain_pixels = 5

    [fits]                           # Gaussian fits of each masked pixel's q projections
    enabled = false                  # at the end of each scan, next to the exact COM
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sxdm_stream.analysis.drift import DriftSettings
from sxdm_stream.analysis.particles import ParticleSettings
from sxdm_stream.core.accumulate import AccumulationSettings
from sxdm_stream.core.qroi import QRoi
from sxdm_stream.errors import ConfigError
from sxdm_stream.sources.files.masks import read_mask

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class SimulationConfig:
    """The built-in simulated experiment (see ``sxdm_stream.simulators.scenarios``)."""

    detector: str = "maxipix_2x2"
    shape: tuple[int, int] = (40, 40)
    step_um: float = 0.1
    n_angles: int = 31
    rocking_half_range_deg: float = 0.3
    counts: float = 2.0e5
    background_rate: float = 2e-5
    drift_um_per_angle: tuple[float, float] = (0.0, 0.0)
    seed: int = 0


@dataclass(frozen=True)
class MapsConfig:
    mask_fraction: float = 0.2
    d_ref_a: float = 0.0


@dataclass(frozen=True)
class OutputConfig:
    directory: str = "results"


@dataclass(frozen=True)
class FitsConfig:
    """Gaussian fits of the histogram projections (:mod:`sxdm_stream.analysis.fits`); they need the
    q histogram (``accumulation.histogram_bins`` not zero)."""

    enabled: bool = False


@dataclass(frozen=True)
class Config:
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    accumulation: AccumulationSettings = field(default_factory=AccumulationSettings)
    maps: MapsConfig = field(default_factory=MapsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    drift: DriftSettings = field(default_factory=DriftSettings)
    particles: ParticleSettings = field(default_factory=ParticleSettings)
    fits: FitsConfig = field(default_factory=FitsConfig)


_ALLOWED = {
    "simulation.detector": ("maxipix_2x2", "eiger2_500k"),
    "accumulation.histogram_dtype": ("float32", "float64"),
    "drift.mode": ("off", "auto", "given"),
}
_POSITIVE = {"simulation.step_um", "simulation.n_angles", "simulation.counts",
             "accumulation.histogram_max_bins", "accumulation.histogram_budget_mib",
             "accumulation.max_valid_counts"}
_FRACTIONS = {"maps.mask_fraction"}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert a TOML value to the type of the field's default; ConfigError if impossible."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if isinstance(default, int) and float(value) != int(value):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return type(default)(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ConfigError(f"{key} must be a list of {len(default)} numbers, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, d) for i, (v, d) in enumerate(zip(value, default)))
    raise ConfigError(f"{key}: unsupported value {value!r}")


def _check_range(key: str, value: Any) -> None:
    if key in _ALLOWED and value not in _ALLOWED[key]:
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(_ALLOWED[key])}")
    if key in _POSITIVE and not value > 0:
        raise ConfigError(f"{key} must be positive, got {value!r}")
    if key in _FRACTIONS and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key} must lie between 0 and 1, got {value!r}")
    if key == "accumulation.pixel_mask" and value:
        try:
            read_mask(value)                      # a missing or unreadable mask fails now
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None


def _section(name: str, cls: type, values: Mapping[str, Any]):
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = f"{name}.{key}"
        if key not in known:
            raise ConfigError(f"unknown key {full}; allowed: {', '.join(sorted(known))}")
        kwargs[key] = _field_value(full, value, known[key])
        _check_range(full, kwargs[key])
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"[{name}] {exc}") from None


def _field_value(full: str, value: Any, f: dataclasses.Field) -> Any:
    if full == "accumulation.histogram_bins":
        if value == "auto":
            return None
        return _coerce(full, value, (0, 0, 0))
    if full == "accumulation.histogram_bounds":
        return _coerce(full, value, ((0.0,) * 3, (0.0,) * 3))
    if full == "drift.shifts_um":
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{full} must be a list of [row, col] pairs, got {value!r}")
        return tuple(_coerce(f"{full}[{i}]", v, (0.0, 0.0)) for i, v in enumerate(value))
    if full == "accumulation.q_ref":
        return _coerce(full, value, (0.0,) * 3)
    if full == "accumulation.q_rois":
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{full} must be a list of tables (name, lo, hi, shape)")
        try:
            return tuple(QRoi.from_description(dict(v) if isinstance(v, Mapping) else v)
                         for v in value)
        except ConfigError as exc:
            raise ConfigError(f"{full}: {exc}") from None
    default = f.default if f.default is not dataclasses.MISSING else None
    if full in ("accumulation.threshold", "accumulation.max_valid_counts"):
        default = 0.0
    return _coerce(full, value, default)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from nested dicts (a parsed TOML document)."""
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}
    kwargs = {}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}]; allowed: {', '.join(sections)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{name}] must be a table of keys")
        kwargs[name] = _section(name, type(sections[name]()), values)
    return Config(**kwargs)


def load_config(path: str | Path | None) -> Config:
    """Read a TOML file (None: all defaults); ConfigError with the file name on a syntax error."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
    accumulation = data.get("accumulation")
    if isinstance(accumulation, dict) and isinstance(accumulation.get("pixel_mask"), str) \
            and accumulation["pixel_mask"]:      # a mask file named relative to the configuration
        accumulation["pixel_mask"] = str(Path(path).parent / accumulation["pixel_mask"])
    return config_from_dict(data)


def override(config: Config, section: str, **values: Any) -> Config:
    """A copy of ``config`` with keys of one section replaced (None values are ignored)."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return config
    current = dataclasses.asdict(getattr(config, section))
    current.update(values)
    cls = type(getattr(config, section))
    return dataclasses.replace(config, **{section: _section(section, cls, _tomlish(current))})


def _tomlish(d: dict) -> dict:
    """asdict output back into TOML-like values (tuples -> lists, None bins -> 'auto')."""
    out = {}
    for k, v in d.items():
        if v is None:
            if k == "histogram_bins":
                out[k] = "auto"
            continue
        out[k] = [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v
    return out


def load_scan_file(path: str | Path):
    """(ScanDescription, Geometry) from a TOML or JSON file with ``scan`` and ``geometry``
    tables in the layout of their ``describe()`` (what the simulator puts in user_data), and
    optionally ``pixel_mask``: a mask file (.npy, EDF, "FILE.h5:/dataset"; non-zero = excluded,
    a path relative to the scan file) that becomes the geometry's detector mask.

    For detectors that send no scan description. As strict as :func:`load_config`: an unknown
    key is an error naming it; ``geometry.wavelength_a``, if given, must agree with
    ``geometry.energy_ev`` (or stands for it).
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
