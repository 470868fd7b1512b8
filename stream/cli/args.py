"""The options several sub-commands share, and the configuration they build.

``demo``, ``simulate``, ``process`` and ``process-file`` take the same simulation and
processing flags; each flag overrides the matching key of ``--config`` (:mod:`sxdm_stream.config`):

==========================  =====================================
flag                        key
==========================  =====================================
``--shape ROWS COLS``       ``simulation.shape``
``--angles``                ``simulation.n_angles``
``--detector``              ``simulation.detector``
``--counts``                ``simulation.counts``
``--seed``                  ``simulation.seed``
``--bins BX BY BZ``         ``accumulation.histogram_bins``
``--budget-mib``            ``accumulation.histogram_budget_mib``
``--max-valid-counts``      ``accumulation.max_valid_counts``
``--mask`` (process)        ``accumulation.pixel_mask``
``--drift``                 ``drift.mode``
``--fits``                  ``fits.enabled``
``--policy`` (process)      ``live.policy``
``--out`` (demo)            ``output.directory``
==========================  =====================================
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sxdm_stream.config import Config, load_config, override
from sxdm_stream.sources.files.masks import split_mask_spec


def add_simulation_args(p: argparse.ArgumentParser) -> None:
    """The simulated scan: configuration file, map shape, angles, detector, counts, seed."""
    p.add_argument("--config", type=Path, help="TOML configuration file (see sxdm_stream.config)")
    p.add_argument("--shape", type=int, nargs=2, metavar=("ROWS", "COLS"), help="map shape")
    p.add_argument("--angles", type=int, help="number of rocking angles")
    p.add_argument("--detector", choices=["maxipix_2x2", "eiger2_500k"])
    p.add_argument("--counts", type=float, help="integrated counts at the particle's thickest point")
    p.add_argument("--seed", type=int)


def add_processing_args(p: argparse.ArgumentParser) -> None:
    """How frames are accumulated and analysed: histogram, budget, drift, fits, valid counts."""
    p.add_argument("--bins", type=int, nargs=3, metavar=("BX", "BY", "BZ"),
                   help="q histogram bins (0 0 0: moments only)")
    p.add_argument("--budget-mib", type=float, help="memory budget of the q histograms")
    p.add_argument("--drift", choices=["off", "auto"],
                   help="sample drift between rocking angles: estimate and correct it (auto) "
                        "or not (off); [drift] in --config for the details")
    p.add_argument("--fits", action="store_true", default=None,
                   help="Gaussian fits of every masked pixel's q projections at the end of a scan")
    p.add_argument("--max-valid-counts", type=float, metavar="COUNTS",
                   help="detector counts above this are invalid: left out and counted (counts "
                        "of 2**bits - 1 always are, and so are counts above the detector's own "
                        "announced limit)")


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration of ``--config`` (or the defaults) with the flags given applied."""
    config = load_config(getattr(args, "config", None))
    config = override(config, "simulation", shape=getattr(args, "shape", None),
                      n_angles=getattr(args, "angles", None), detector=getattr(args, "detector", None),
                      counts=getattr(args, "counts", None), seed=getattr(args, "seed", None))
    mask = getattr(args, "mask", None)
    config = override(config, "accumulation", histogram_bins=getattr(args, "bins", None),
                      histogram_budget_mib=getattr(args, "budget_mib", None),
                      max_valid_counts=getattr(args, "max_valid_counts", None),
                      pixel_mask=_absolute_mask_spec(mask) if mask is not None else None)
    config = override(config, "drift", mode=getattr(args, "drift", None))
    config = override(config, "fits", enabled=getattr(args, "fits", None))
    config = override(config, "live", policy=getattr(args, "policy", None))
    out = getattr(args, "out", None)
    return override(config, "output", directory=str(out) if out and args.command == "demo" else None)


def _absolute_mask_spec(spec) -> str:
    """A mask file spec with an absolute path, so that the results record which file it was."""
    path, dataset = split_mask_spec(spec)
    return str(path.resolve()) + (f":{dataset}" if dataset is not None else "")
