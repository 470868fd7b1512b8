"""The bluesky plugin over the wire: RunEngine -> Publisher (msgpack) -> the real
``bluesky-0MQ-proxy`` subprocess -> RemoteDispatcher (``RemoteListener``) -> LiveProcessor."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import free_port, wait_until

pytest.importorskip("bluesky")
pytest.importorskip("msgpack_numpy")

from bluesky import RunEngine  # noqa: E402
from bluesky.callbacks.zmq import Publisher  # noqa: E402

from sxdm_stream.config import Config  # noqa: E402
from sxdm_stream.plugins.bluesky import RemoteListener, sim_sxdm_devices, sxdm_map  # noqa: E402
from sxdm_stream.plugins.bluesky.remote import (msgpack_dumps, msgpack_loads,  # noqa: E402
                                                serializer_pair)
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings  # noqa: E402
from sxdm_stream.simulators.validation import accuracy_report  # noqa: E402


def proxy_command() -> list[str]:
    exe = Path(sys.executable).with_name("bluesky-0MQ-proxy")
    return [str(exe)] if exe.exists() else [shutil.which("bluesky-0MQ-proxy") or "bluesky-0MQ-proxy"]


@pytest.fixture
def proxy():
    """The real bluesky-0MQ-proxy on two free loopback ports: (in_port, out_port)."""
    ports = free_port(), free_port()
    process = subprocess.Popen([*proxy_command(), "--in-address", f"127.0.0.1:{ports[0]}",
                                "--out-address", f"127.0.0.1:{ports[1]}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    yield ports
    process.terminate()
    _, err = process.communicate(timeout=10)
    assert process.returncode is not None, err


def wait_until_connected(publisher, listener, timeout=20.0) -> None:
    """Beat the PUB/SUB slow joiner: publish probe start documents until one arrives."""
    arrived = threading.Event()
    probe = f"probe-{uuid.uuid4().hex}"
    listener.subscribe(lambda name, doc: arrived.set() if doc.get("uid") == probe else None)
    deadline = time.monotonic() + timeout
    while not arrived.wait(0.05):
        assert time.monotonic() < deadline, "the subscriber never received a probe document"
        publisher("start", {"uid": probe, "time": time.time(), "sxdm_probe": True})


def test_msgpack_round_trip_keeps_numpy_images():
    import numpy as np
    doc = {"data": {"img": np.arange(12, dtype=np.uint32).reshape(3, 4), "x": 1.5}}
    back = msgpack_loads(msgpack_dumps(doc))
    assert back["data"]["img"].dtype == np.uint32
    np.testing.assert_array_equal(back["data"]["img"], doc["data"]["img"])
    with pytest.raises(ValueError):
        serializer_pair("json")


@contextlib.contextmanager
def run_engine_through_proxy(proxy, live, scenario):
    """A RunEngine publishing through the real proxy to a RemoteListener feeding ``live``
    (connected before it yields); everything is stopped and joined at the end.
    Yields (RE, listener, listener thread)."""
    in_port, out_port = proxy
    listener = RemoteListener(f"127.0.0.1:{out_port}", live,
                              pixel_mask=scenario.geometry.detector.mask)
    thread = threading.Thread(target=listener.run, name="test-dispatcher")
    thread.start()
    publisher = Publisher(f"127.0.0.1:{in_port}", serializer=msgpack_dumps)
    loop = asyncio.new_event_loop()
    RE = RunEngine({}, loop=loop, context_managers=[])
    try:
        wait_until_connected(publisher, listener)
        RE.subscribe(publisher)
        yield RE, listener, thread
    finally:
        listener.stop()
        thread.join(10)
        publisher.close()
        live.stop()
        loop.call_soon_threadsafe(loop.stop)
        RE._th.join(10)
        loop.close()


def run_map(RE, scenario) -> None:
    scan = scenario.scan
    devices = sim_sxdm_devices(scenario)
    (r0, r1), (c0, c1) = scan.extents_um
    RE(sxdm_map([devices.det], devices.piy, r0, r1, scan.shape[0], devices.pix, c0, c1,
                scan.shape[1], devices.eta, scan.rocking_angles,
                geometry=scenario.geometry, fixed_angles=scan.fixed_angles))


def test_sxdm_map_through_the_0mq_proxy(proxy, small_scenario):
    scan = small_scenario.scan
    live = LiveProcessor(None, settings=Config(live=LiveSettings(checkpoints=False)), max_series=1).start()
    with run_engine_through_proxy(proxy, live, small_scenario) as (RE, listener, thread):
        run_map(RE, small_scenario)
        assert live.wait(60), live.status()
    assert not thread.is_alive()
    assert live.status().processed == scan.n_frames
    assert listener.callback.runs_seen == 1 and not listener.callback.rejected
    report = accuracy_report(live.results[0].maps, small_scenario.simulator.truth())
    assert report["strain_rms_error"] <= 2 * report["strain_limit"], report
    assert report["tilt_rms_error_deg"] <= 2 * report["tilt_limit_deg"], report


def test_listener_stops_before_it_runs():
    live = LiveProcessor(None)
    listener = RemoteListener(f"127.0.0.1:{free_port()}", live)
    listener.stop()
    listener.run()                      # returns at once


class _Ignore:
    """A processor for a listener that only collects documents through ``subscribe``."""

    def submit(self, message):
        raise AssertionError(f"no SXDM run expected here, got {message}")


def test_process_cli_joins_detector_and_bluesky_and_emits_a_derived_run(
        proxy, small_scenario, small_processed, tmp_path):
    """``sxdm-stream process --connect DETECTOR --bluesky PROXY_OUT --bluesky-publish PROXY_IN``
    as its own process: a streaming detector sends the frames, the RunEngine (through the real
    proxy) the scan and the positions; the maps are written, match the ground truth, and come
    back through the proxy as a derived run under the prefix ``sxdm-maps``."""
    import numpy as np

    from sxdm_stream.plugins.bluesky import StreamingSxdmDetector
    from sxdm_stream.sinks.results import read_maps
    from sxdm_stream.sources.dectris.sender import StreamSender

    in_port, out_port = proxy
    sender = StreamSender("tcp://127.0.0.1:*")
    out = tmp_path / "maps.h5"
    cli = subprocess.Popen(
        [sys.executable, "-m", "sxdm_stream.cli", "process", "--connect", sender.endpoint,
         "--bluesky", f"127.0.0.1:{out_port}", "--bluesky-publish", f"127.0.0.1:{in_port}",
         "--out", str(out), "--series", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log_lines: list[str] = []
    reader = threading.Thread(target=lambda: log_lines.extend(cli.stderr), name="test-cli-log")
    reader.start()
    derived_docs = []
    listener = RemoteListener(f"127.0.0.1:{out_port}", _Ignore(), prefix=b"sxdm-maps")
    listener.subscribe(lambda name, doc: derived_docs.append((name, doc)))
    thread = threading.Thread(target=listener.run, name="test-derived")
    thread.start()
    publisher = Publisher(f"127.0.0.1:{in_port}", serializer=msgpack_dumps)
    probe_derived = Publisher(f"127.0.0.1:{in_port}", prefix=b"sxdm-maps", serializer=msgpack_dumps)
    loop = asyncio.new_event_loop()
    RE = RunEngine({}, loop=loop, context_managers=[])
    try:
        wait_until_connected(probe_derived, listener)
        deadline = time.monotonic() + 60           # the CLI's dispatcher has joined the proxy
        while not any("not an SXDM scan" in line for line in log_lines):
            assert cli.poll() is None and time.monotonic() < deadline, "".join(log_lines)
            publisher("start", {"uid": f"probe-{uuid.uuid4().hex}", "time": time.time()})
            time.sleep(0.2)
        RE.subscribe(publisher)
        scan = small_scenario.scan
        devices = sim_sxdm_devices(small_scenario)
        eiger = StreamingSxdmDetector(small_scenario, devices.motors, sender, name="eiger")
        (r0, r1), (c0, c1) = scan.extents_um
        RE(sxdm_map([eiger], devices.piy, r0, r1, scan.shape[0], devices.pix, c0, c1,
                    scan.shape[1], devices.eta, scan.rocking_angles,
                    geometry=small_scenario.geometry, fixed_angles=scan.fixed_angles))
        assert cli.wait(120) == 0, "".join(log_lines)
        wait_until(lambda: any(name == "stop" for name, _ in derived_docs), 20)
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.wait(30)
        reader.join(10)
        cli.stderr.close()
        listener.stop()
        thread.join(10)
        publisher.close()
        probe_derived.close()
        sender.close()
        loop.call_soon_threadsafe(loop.stop)
        RE._th.join(10)
        loop.close()
    maps = read_maps(out)
    reference = small_processed.maps()               # in process, every frame in its place
    np.testing.assert_array_equal(maps["intensity"], reference.intensity)
    np.testing.assert_allclose(maps["strain"], reference.strain, rtol=1e-9, atol=1e-6,
                               equal_nan=True)
    report = accuracy_report(reference, small_scenario.simulator.truth())
    assert report["strain_rms_error"] <= 2 * report["strain_limit"], report
    names = [name for name, doc in derived_docs if not doc.get("uid", "").startswith("probe-")]
    assert names == ["start", "descriptor", "event", "stop"], names
    docs = dict((name, doc) for name, doc in derived_docs if name != "start" or "sxdm_maps" in doc)
    assert docs["start"]["plan_name"] == "sxdm_stream_maps"
    assert docs["start"]["sxdm_maps"]["complete"] and docs["stop"]["exit_status"] == "success"
    assert docs["start"]["sxdm_maps"]["frames"]["processed"] == scan.n_frames
    assert docs["descriptor"]["data_keys"]["strain"]["units"] == "microstrain"
    np.testing.assert_allclose(np.asarray(docs["event"]["data"]["strain"]), maps["strain"],
                               rtol=1e-12, equal_nan=True)
    assert any("joined to run" in line for line in log_lines)


def test_derived_runs_on_the_same_proxy_do_not_cut_the_next_run(proxy, small_scenario):
    """``--bluesky`` and ``--bluesky-publish`` on one proxy: the processor's own derived run of
    the first map comes back through the proxy while the second map runs; it is skipped, and
    both maps are complete."""
    from sxdm_stream.plugins.bluesky.derived import DerivedRunPublisher

    in_port, _ = proxy
    scan = small_scenario.scan
    live = LiveProcessor(None, settings=Config(live=LiveSettings(checkpoints=False)), max_series=2).start()
    derived = DerivedRunPublisher(f"127.0.0.1:{in_port}")
    live.on_result(derived)
    try:
        with run_engine_through_proxy(proxy, live, small_scenario) as (RE, listener, _thread):
            for _ in range(2):
                run_map(RE, small_scenario)
            assert live.wait(60), live.status()
    finally:
        derived.close()
    assert [r.complete for r in live.results] == [True, True]
    assert live.status().processed == 2 * scan.n_frames
    assert listener.callback.runs_seen == 2 and not listener.callback.rejected
    assert derived.runs == 2 and listener.skipped >= 4       # the first derived run came back
