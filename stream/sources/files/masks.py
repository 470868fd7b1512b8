"""Detector pixel masks: read from files, combined from every source, reported once.

A detector pixel is left out of the sums when any source says so (logical OR):

* the detector's own mask: the series start's ``pixel_mask``, or a beamline file's;
* the user's: ``process --mask FILE`` (``accumulation.pixel_mask`` in ``--config``) and a
  ``pixel_mask`` in the ``--scan-file``.

Mask files hold non-zero for an excluded pixel, as pyFAI and XSOCS write them: NumPy ``.npy``,
a dataset of an HDF5 file written ``FILE.h5:/path/to/dataset``, or any image fabio reads (EDF,
fit2d ``.msk``...).

The detector's invalid value is not a mask: it is a count (2**bits - 1 on an Eiger) that
marks, frame by frame, a pixel the detector did not measure. The accumulation kernels leave
such pixels out and count them (:attr:`sxdm_stream.core.accumulate.Accumulator.invalid_pixels`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from sxdm_stream.errors import ConfigError

#: suffixes read as HDF5 (the dataset follows a colon: ``mask.h5:/entry/mask``)
HDF5_SUFFIXES = ("h5", "hdf5", "hdf", "nxs", "nx5", "cxi")
_HDF5_SPEC = re.compile(rf"^(.*?\.(?:{'|'.join(HDF5_SUFFIXES)}))(?:::?(/.*))?$", re.IGNORECASE)


def split_mask_spec(spec: str | Path) -> tuple[Path, str | None]:
    """(file, HDF5 dataset or None) of ``"mask.npy"``, ``"m.h5:/entry/mask"`` (also ``::``)."""
    match = _HDF5_SPEC.match(str(spec))
    if match:
        return Path(match[1]), match[2] or ""
    return Path(str(spec)), None


def read_mask(spec: str | Path) -> np.ndarray:
    """The boolean mask (True = excluded, read-only) in the file ``spec``.

    A file is read once per version (its modification time and size): a mask given to a
    processor that runs for hundreds of series is not read again at each.

    Raises
    ------
    ConfigError : the file is missing, of an unknown format, not 2D, or (HDF5) names no
        dataset; the message names the file.
    """
    path, dataset = split_mask_spec(spec)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read the mask {spec}: {exc.strerror}") from None
    return _read_mask_file(str(path), dataset, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_mask_file(path: str, dataset: str | None, _mtime_ns: int, _size: int) -> np.ndarray:
    shown = f"{path}:{dataset}" if dataset else path
    if dataset == "":
        raise ConfigError(f"the mask {path} is an HDF5 file: name its dataset, as in "
                          f"{path}:/path/to/mask")
    try:
        data = _read_array(path, dataset)
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the mask {shown}: {exc}") from None
    mask = np.asarray(data) != 0          # NaN != 0: a pixel without a number is excluded too
    if mask.ndim != 2:
        raise ConfigError(f"the mask {shown} has shape {mask.shape}; a detector mask is 2D")
    mask.setflags(write=False)
    return mask


def _read_array(path: str, dataset: str | None) -> np.ndarray:
    if dataset is not None:
        with h5py.File(path, "r") as f:
            node = f.get(dataset)
            if not isinstance(node, h5py.Dataset):
                raise ConfigError(f"the mask file {path} has no dataset {dataset}")
            return node[()]
    if path.lower().endswith(".npy"):
        return np.load(path, allow_pickle=False)
    try:
        import fabio
    except ImportError:                           # pragma: no cover - fabio is a dependency
        raise ConfigError(f"reading the mask {path} needs fabio (pip install fabio), or give "
                          "it as .npy or FILE.h5:/dataset") from None
    try:
        with fabio.open(path) as image:
            return np.array(image.data)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"the mask {path} is neither .npy, nor FILE.h5:/dataset, nor an image "
                          f"fabio reads (EDF, .msk...): {exc}") from None


@dataclass(frozen=True)
class CombinedMask:
    """The OR of every mask source, and how many pixels each source excludes.

    ``mask`` is None when no source excludes anything; ``pixels`` maps each source's name to
    its excluded pixels, in the order the sources were given (a pixel may be in several).
    """

    mask: np.ndarray | None = field(repr=False)
    pixels: dict[str, int]

    @property
    def n_excluded(self) -> int:
        return int(np.count_nonzero(self.mask)) if self.mask is not None else 0

    def summary(self) -> str:
        """One line for the log: the total, then each source."""
        if not self.pixels:
            return "no pixel mask"
        each = ", ".join(f"{n} from {name}" for name, n in self.pixels.items())
        return f"{self.n_excluded} detector pixels masked ({each})"


def combine_masks(shape: tuple[int, int], sources: Mapping[str, np.ndarray | None]) -> CombinedMask:
    """OR of the boolean masks of ``sources`` (name -> (rows, cols) array, or None: absent).

    Raises ConfigError naming the source whose shape is not the detector's ``shape``.
    """
    combined = None
    pixels: dict[str, int] = {}
    for name, mask in sources.items():
        if mask is None:
            continue
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != tuple(shape):
            raise ConfigError(f"the pixel mask from {name} has shape {mask.shape}; the "
                              f"detector's images are {tuple(shape)}")
        pixels[name] = int(np.count_nonzero(mask))
        combined = mask.copy() if combined is None else combined | mask
    return CombinedMask(combined, pixels)
