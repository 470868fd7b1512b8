"""The demo: a simulated detector and the live processor together, no hardware.

Live (default): the simulated detector runs in its own process (``sxdm-stream simulate``) and
sends the scan as a DECTRIS stream over loopback ZeroMQ; the live processor receives, decodes,
accumulates and writes the results, exactly as at the beamline. In-process: frames go straight
from the simulator into the accumulator (no sockets, the quickest check of the physics).

Operando (:func:`run_operando_demo`, ``demo --operando N``): the simulated charge of
:mod:`.operando` (N maps, drift between them, the H2-H3 transition, a particle appearing) sent
the same way to a processor that follows the series: one results file per map, the operando
series file, a PNG of the per-particle curves, and the figures against the truth.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sxdm_stream.analysis.scan_analysis import analyse
from sxdm_stream.config import Config
from sxdm_stream.core.accumulate import ScanSetup
from sxdm_stream.core.maps import MapSet
from sxdm_stream.messages import LiveStatus
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime.processor import LiveProcessor, format_status
from sxdm_stream.sinks.overview import write_operando_png, write_overview_png
from sxdm_stream.sinks.results import write_results
from sxdm_stream.sinks.timeseries import read_operando

from .operando import OperandoSeries
from .operando_validation import operando_accuracy
from .scenarios import Scenario, default_scenario
from .validation import accuracy_report

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    maps: MapSet
    frames: dict
    accuracy: dict
    results_path: Path
    overview_path: Path


def simulation_toml(config: Config) -> str:
    """The [simulation] table of ``config`` as TOML, to hand to a simulator process."""
    lines = ["[simulation]"]
    for key, value in dataclasses.asdict(config.simulation).items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, (tuple, list)):
            lines.append(f"{key} = [{', '.join(repr(v) for v in value)}]")
        else:
            lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


def run_demo(config: Config, live: bool = True, fmt: str = "cbor") -> DemoResult:
    """Simulate the configured scan, process it, write results and overview; compare to truth."""
    scenario = default_scenario(**dataclasses.asdict(config.simulation))
    out = Path(config.output.directory)
    out.mkdir(parents=True, exist_ok=True)
    results, overview = out / "sxdm_results.h5", out / "sxdm_overview.png"
    if live:
        maps, frames = _run_live(config, scenario, results, fmt)
    else:
        maps, frames = _run_in_process(config, scenario, results)
    write_overview_png(overview, maps, scenario.scan, title=f"sxdm-stream demo: {scenario.scan.scan_id}")
    return DemoResult(maps, frames, accuracy_report(maps, scenario.simulator.truth()), results, overview)


def _run_live(config: Config, scenario: Scenario, results: Path, fmt: str):
    # fail on a bad configuration here, before a detector process is started
    ScanSetup(scenario.geometry, scenario.scan, config.accumulation)
    with tempfile.TemporaryDirectory() as tmp:
        sim_config = Path(tmp) / "simulation.toml"
        sim_config.write_text(simulation_toml(config))
        child = subprocess.Popen(
            [sys.executable, "-m", "sxdm_stream.cli.main", "simulate", "--bind", "tcp://127.0.0.1:*",
             "--format", fmt, "--config", str(sim_config)],
            stdout=subprocess.PIPE, text=True)
        try:
            endpoint = _read_endpoint(child)
            log.info("simulated detector (pid %d) streaming on %s", child.pid, endpoint)
            # the demo remakes its own outputs on every run
            processor = LiveProcessor(endpoint, out=results, settings=config, max_series=1,
                                      overwrite=True)
            with processor:
                while not processor.wait(1.0):
                    if child.poll() not in (None, 0):
                        raise RuntimeError(f"the simulated detector exited with {child.returncode}")
                    log.info("%s", format_status(processor.status()))
            log.info("%s", format_status(processor.status()))
        finally:
            _end(child)
    if processor.failure is not None or not processor.results:
        raise RuntimeError(processor.failure or "the live processor wrote no result")
    result = processor.results[-1]
    return result.maps, _frames_summary(processor.status())


@dataclass
class OperandoDemoResult:
    accuracy: dict
    frames: dict
    series_path: Path
    overview_path: Path
    results_dir: Path


#: q shells of the operando demo's processor (the phases need them)
OPERANDO_DEMO_SHELLS = 64


def run_operando_demo(config: Config, n_scans: int, shape: tuple[int, int] | None = None,
                      n_angles: int | None = None, fmt: str = "cbor") -> OperandoDemoResult:
    """Simulate an operando charge of ``n_scans`` maps in a detector process, follow it with
    the live processor, and compare the series with the truth (see the module docstring)."""
    out = Path(config.output.directory)
    maps_dir = out / "operando_maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    series_path, overview = out / "operando_series.h5", out / "operando_overview.png"
    if series_path.exists():
        series_path.unlink()                      # the demo remakes its own outputs
    if not config.accumulation.q_shells:
        config = dataclasses.replace(config, accumulation=dataclasses.replace(
            config.accumulation, q_shells=OPERANDO_DEMO_SHELLS))
    simulated = OperandoSeries(n_scans, **{k: v for k, v in (("shape", shape), ("n_angles", n_angles))
                                           if v is not None})
    command = [sys.executable, "-m", "sxdm_stream.cli.main", "simulate", "--bind",
               "tcp://127.0.0.1:*", "--format", fmt, "--operando", str(n_scans)]
    command += ["--shape", *map(str, shape)] if shape else []
    command += ["--angles", str(n_angles)] if n_angles else []
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = _read_endpoint(child)
        log.info("simulated detector (pid %d) streaming %d operando maps on %s", child.pid,
                 n_scans, endpoint)
        processor = LiveProcessor(endpoint, out=maps_dir / "map.h5", settings=config,
                                  max_series=n_scans, overwrite=True, operando=series_path)
        with processor:
            while not processor.wait(5.0):
                if child.poll() not in (None, 0):
                    raise RuntimeError(f"the simulated detector exited with {child.returncode}")
                log.info("%s", format_status(processor.status()))
    finally:
        _end(child)
    if processor.failure is not None or processor.status().completed < n_scans:
        raise RuntimeError(processor.failure or f"the live processor completed "
                                                f"{processor.status().completed} of {n_scans} maps")
    series = read_operando(series_path)
    truths = [dataclasses.replace(simulated.scan(k), scenario=None) for k in range(n_scans)]
    write_operando_png(overview, series, title=f"sxdm-stream operando demo: {n_scans} maps")
    return OperandoDemoResult(operando_accuracy(series, truths, simulated.appears_at),
                              _frames_summary(processor.status()), series_path, overview, maps_dir)


def _read_endpoint(child: subprocess.Popen) -> str:
    line = child.stdout.readline()
    if not line.startswith("endpoint: "):
        raise RuntimeError(f"the simulated detector did not start (said {line!r})")
    return line.split(": ", 1)[1].strip()


def _end(child: subprocess.Popen) -> None:
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    if child.stdout:
        child.stdout.close()


def _frames_summary(status: LiveStatus) -> dict:
    return {"received": status.received, "processed": status.processed,
            "rejected": dict(status.rejected), "dropped": status.dropped,
            "frames_per_s": round(status.frames_per_s, 1)}


def _run_in_process(config: Config, scenario: Scenario, results: Path):
    setup = ScanSetup(scenario.geometry, scenario.scan, config.accumulation)
    processor = ScanProcessor(setup, config.maps.mask_fraction, config.maps.d_ref_a)
    total, last = scenario.scan.n_frames, time.perf_counter()
    for index, _angle, _point, frame in scenario.simulator.frames(reuse_buffer=True):
        processor.add(index, frame)
        if time.perf_counter() - last >= 1.0 or index + 1 == total:
            last = time.perf_counter()
            log.info("frames %d/%d, %.0f frames/s", processor.counters.received, total,
                     processor.counters.rate())
    analysis = analyse(processor.accumulator, config.analysis, final=True)
    maps = analysis.maps
    write_results(results, maps, setup, processor.accumulator,
                  hits=setup.hits() if setup.keep_histogram else None,
                  extra_attrs={"status": "complete", "frames_processed": processor.counters.processed},
                  analysis=analysis)
    return maps, processor.counters.summary()
