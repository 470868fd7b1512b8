"""The command line, run as a user runs it."""

import subprocess
import sys

import numpy as np

from sxdm_stream.cli.main import main
from sxdm_stream.sinks.results import read_maps
from sxdm_stream.sinks.timeseries import read_operando


def test_demo_writes_results_that_match_the_printed_accuracy(tmp_path, capsys):
    assert main(["demo", "--shape", "12", "14", "--angles", "15", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "'processed': 2520" in out and "strain RMS error" in out
    maps = read_maps(tmp_path / "sxdm_results.h5")
    assert maps["strain"].shape == (12, 14)
    assert np.isfinite(maps["strain"][maps["mask"]]).all()
    assert np.isnan(maps["strain"][~maps["mask"]]).all()
    png = (tmp_path / "sxdm_overview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_operando_demo_follows_the_charge_and_prints_its_figures(tmp_path, capsys):
    """demo --operando: a detector process sends the charge, the processor follows it."""
    assert main(["demo", "--operando", "4", "--angles", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "identities kept: 3 of 3 particles that stay; newcomers announced: 1 of 1" in out
    series = read_operando(tmp_path / "operando_series.h5")
    assert series["records"] == 4 and sorted(set(series["particles"]["particle_id"])) == [1, 2, 3, 4]
    assert len(list((tmp_path / "operando_maps").glob("*.h5"))) == 4
    assert (tmp_path / "operando_overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["demo", "--operando", "2", "--in-process", "--out", str(tmp_path)]) == 2


def test_demo_refuses_a_histogram_over_budget_and_says_what_fits(tmp_path, capsys):
    code = main(["demo", "--shape", "12", "12", "--bins", "64", "64", "64", "--budget-mib", "10",
                 "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "over the budget of 10.0 MiB" in err and "bins per map pixel fit" in err
    assert not (tmp_path / "sxdm_results.h5").exists()


def test_bad_configuration_file_is_reported_with_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[simulation]\ndetector = "pilatus"\n')
    assert main(["demo", "--config", str(cfg), "--out", str(tmp_path)]) == 2
    assert "simulation.detector = 'pilatus' is not one of" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "sxdm_stream.cli", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("sxdm-stream ")


def test_manual_two_process_form_gives_the_demo_maps(tmp_path, capsys):
    """`simulate` in one process, `process` in another (as at the beamline) == `demo`."""
    sim = subprocess.Popen([sys.executable, "-m", "sxdm_stream.cli", "simulate", "--bind",
                            "tcp://127.0.0.1:*", "--shape", "12", "14", "--angles", "15"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    endpoint = sim.stdout.readline().split(": ", 1)[1].strip()
    out = tmp_path / "manual.h5"
    proc = subprocess.run([sys.executable, "-m", "sxdm_stream.cli", "process", "--connect", endpoint,
                           "--out", str(out), "--series", "1"], capture_output=True, text=True,
                          timeout=300)
    sim.communicate(timeout=60)
    assert proc.returncode == 0 and sim.returncode == 0, proc.stderr
    assert "complete" in proc.stderr
    assert main(["demo", "--shape", "12", "14", "--angles", "15", "--out", str(tmp_path / "demo")]) == 0
    manual, demo = read_maps(out), read_maps(tmp_path / "demo" / "sxdm_results.h5")
    for name in ("intensity", "strain", "d_spacing", "tilt_altitude", "tilt_azimuth"):
        np.testing.assert_allclose(manual[name], demo[name], rtol=1e-9, atol=1e-9, equal_nan=True)
