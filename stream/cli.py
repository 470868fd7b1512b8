"""Command line: parse, build the configuration, call the library.

``sxdm-stream demo`` simulates the default LiNiO2 scan, accumulates every frame in-process,
derives the maps and writes ``sxdm_results.h5`` (NeXus) and ``sxdm_overview.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from . import __version__
from .config import Config, load_config, override
from .errors import SxdmError

log = logging.getLogger("sxdm_stream")


def _add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="simulate a scan, process it in-process, write results and a PNG",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="TOML configuration file (see sxdm_stream.config)")
    p.add_argument("--out", type=Path, help="output directory (default: results)")
    p.add_argument("--shape", type=int, nargs=2, metavar=("ROWS", "COLS"), help="map shape")
    p.add_argument("--angles", type=int, help="number of rocking angles")
    p.add_argument("--detector", choices=["maxipix_2x2", "eiger2_500k"])
    p.add_argument("--counts", type=float, help="integrated counts at the particle's thickest point")
    p.add_argument("--seed", type=int)
    p.add_argument("--bins", type=int, nargs=3, metavar=("BX", "BY", "BZ"),
                   help="q histogram bins (0 0 0: moments only)")
    p.add_argument("--budget-mib", type=float, help="memory budget of the q histograms")
    p.set_defaults(run=run_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sxdm-stream", description="Live SXDM processing")
    parser.add_argument("--version", action="version", version=f"sxdm-stream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo_parser(sub)
    return parser


def demo_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    config = override(config, "simulation", shape=args.shape, n_angles=args.angles,
                      detector=args.detector, counts=args.counts, seed=args.seed)
    config = override(config, "accumulation", histogram_bins=args.bins,
                      histogram_budget_mib=args.budget_mib)
    return override(config, "output", directory=str(args.out) if args.out else None)


def run_demo(args: argparse.Namespace) -> int:
    from .simulators.scenarios import default_scenario   # the CLI is the top layer
    from .simulators.validation import accuracy_report, format_report
    from .accumulate import ScanSetup
    from .hdf5 import write_results
    from .overview import write_overview_png
    from .pipeline import ScanProcessor

    config = demo_config(args)
    scenario = default_scenario(**vars(config.simulation))
    setup = ScanSetup(scenario.geometry, scenario.scan, config.accumulation)
    processor = ScanProcessor(setup, config.maps.mask_fraction, config.maps.d_ref_a or None)
    scan = scenario.scan
    log.info("scan %s: %dx%d map, %d rocking angles, %d frames; q grid %s bins",
             scan.scan_id, *scan.shape, scan.n_angles, scan.n_frames,
             "x".join(map(str, setup.grid.bins)) if setup.keep_histogram else "(none)")
    _process_with_progress(processor, scenario.simulator)
    maps = processor.maps()
    out = Path(config.output.directory)
    out.mkdir(parents=True, exist_ok=True)
    results, overview = out / "sxdm_results.h5", out / "sxdm_overview.png"
    write_results(results, maps, setup, processor.accumulator, config=_config_dict(config),
                  hits=setup.hits() if setup.keep_histogram else None,
                  extra_attrs={"status": "complete", **_flat_counters(processor)})
    write_overview_png(overview, maps, scan, title=f"sxdm-stream demo: {scan.scan_id}")
    print(f"frames: {processor.counters.summary()}")
    print(f"d_ref = {maps.d_ref:.5f} A, mask {int(maps.mask.sum())} of {maps.mask.size} pixels")
    print(format_report(accuracy_report(maps, scenario.simulator.truth())))
    print(f"wrote {results} and {overview}")
    return 0


def _process_with_progress(processor, simulator, every_s: float = 1.0) -> None:
    total = processor.setup.scan.n_frames
    last = time.perf_counter()
    for index, _angle, _point, frame in simulator.frames(reuse_buffer=True):
        processor.add(index, frame)
        now = time.perf_counter()
        if now - last >= every_s or index + 1 == total:
            last = now
            c = processor.counters
            log.info("frames %d/%d (%.0f%%), %.0f frames/s, rejected %d",
                     c.received, total, 100.0 * c.received / total, c.rate(), c.n_rejected)


def _flat_counters(processor) -> dict:
    c = processor.counters
    return {"frames_received": c.received, "frames_processed": c.processed,
            "frames_rejected": c.n_rejected}


def _config_dict(config: Config) -> dict:
    import dataclasses
    return dataclasses.asdict(config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.run(args)
    except SxdmError as exc:
        print(f"sxdm-stream: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
