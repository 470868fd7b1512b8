"""Reading the configuration: TOML to :class:`~sxdm_stream.config.tree.Config`, the format
version, old spellings, and overrides from the command line (see :mod:`sxdm_stream.config`).
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

from sxdm_stream.config.tree import Config, check_value
from sxdm_stream.core.qroi import QRoi
from sxdm_stream.errors import ConfigError
from sxdm_stream.version import __version__

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: the configuration format this sxdm-stream reads (the top-level ``version`` key)
CONFIG_VERSION = 1


class ConfigDeprecationWarning(FutureWarning):
    """An old spelling in a configuration file, still read; the message names the new one.
    (A FutureWarning, so that the command line shows it.)"""


#: names a setting had in Python (never in a file): the error names the key to write instead
_RENAMED = {
    "maps.d_ref": "maps.d_ref_a",
    "live.queue_size": "live.frame_queue_messages",
    "live.queue_mib": "live.frame_queue_mib",
    "live.snapshot_hz": "live.snapshot_max_hz",
    "live.mask_fraction": "maps.mask_fraction",
    "live.d_ref": "maps.d_ref_a",
    "live.fits": "fits.enabled",
    "live.suggest_rois": "roi_suggestion.enabled",
}


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


def _section(name: str, cls: type, values: Mapping[str, Any]):
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = f"{name}.{key}"
        if full in _RENAMED:
            raise ConfigError(f"unknown key {full}: it is called {_RENAMED[full]}")
        if key not in known:
            raise ConfigError(f"unknown key {full}; allowed: {', '.join(sorted(known))}")
        kwargs[key] = _field_value(full, value, known[key])
        check_value(full, kwargs[key])
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
    if full == "alarms.fraction_crossings":
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{full} must be a list of fractions, got {value!r}")
        return tuple(_coerce(f"{full}[{i}]", v, 0.0) for i, v in enumerate(value))
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
    if default is None:                           # a number, None (left out) meaning "not set"
        default = 0.0
    return _coerce(full, value, default)


def check_version(version: Any) -> None:
    """ConfigError unless ``version`` (the top-level key of a file) is a format this
    sxdm-stream reads, saying which one it reads."""
    reads = f"this sxdm-stream ({__version__}) reads configuration format {CONFIG_VERSION}"
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(f"version must be an integer, the configuration format "
                          f"({CONFIG_VERSION}), got {version!r}")
    if version > CONFIG_VERSION:
        raise ConfigError(f"version = {version}: the file is written for a newer sxdm-stream; "
                          f"{reads}: upgrade sxdm-stream, or write the file in format "
                          f"{CONFIG_VERSION} (docs/configuration.md)")
    if version < CONFIG_VERSION:
        raise ConfigError(f"version = {version} is not a configuration format; {reads} "
                          "(docs/configuration.md)")


def _read_old_spellings(data: dict) -> dict:
    """Old spellings a user's file may hold, read as their new form with a warning."""
    maps = data.get("maps")
    if isinstance(maps, Mapping) and "d_ref_a" in maps and not isinstance(maps["d_ref_a"], bool) \
            and maps["d_ref_a"] == 0:
        warnings.warn("maps.d_ref_a = 0 for 'the mean d over the mask' is deprecated: leave "
                      "maps.d_ref_a out (it is the default)", ConfigDeprecationWarning,
                      stacklevel=3)
        data = {**data, "maps": {k: v for k, v in maps.items() if k != "d_ref_a"}}
    return data


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from nested dicts (a parsed TOML document); the
    top-level ``version`` is checked first (left out: :data:`CONFIG_VERSION`)."""
    data = dict(data)
    check_version(data.pop("version", CONFIG_VERSION))
    data = _read_old_spellings(data)
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}
    kwargs = {}
    for name, values in data.items():
        if name not in sections:
            if isinstance(values, Mapping):
                raise ConfigError(f"unknown section [{name}]; allowed: {', '.join(sections)}")
            raise ConfigError(f"unknown key {name}; allowed at the top: version, and the "
                              f"sections {', '.join(sections)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{name}] must be a table of keys")
        kwargs[name] = _section(name, type(sections[name]()), values)
    return Config(**kwargs)


def load_config(path: str | Path | None) -> Config:
    """Read and check a TOML file (None: all defaults); a ConfigError starts with the file
    name."""
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
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def override(config: Config, section: str, **values: Any) -> Config:
    """A copy of ``config`` with keys of one section replaced (None values are ignored),
    checked as a file's would be."""
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
