"""Configuration: TOML loading, validation messages that name the key, CLI overrides; the one
tree (every key documented, one name per setting, every [live] key reaching the processor) and
the format version."""

import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import sxdm_stream.config as config_module
from sxdm_stream.analysis.scan_analysis import AnalysisSettings, analyse
from sxdm_stream.cli.args import config_from_args
from sxdm_stream.cli.main import build_parser, main
from sxdm_stream.config import (CONFIG_VERSION, Config, ConfigDeprecationWarning, LiveSettings,
                                config_from_dict, load_config, load_scan_file, override)
from sxdm_stream.errors import ConfigError
from sxdm_stream.messages import ImageFrame, SeriesEnd
from sxdm_stream.runtime.processor import LiveProcessor

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_and_a_full_file(tmp_path):
    assert load_config(None) == Config()
    path = tmp_path / "c.toml"
    path.write_text(
        '[simulation]\ndetector = "eiger2_500k"\nshape = [20, 30]\ncounts = 1e5\n'
        '[accumulation]\nthreshold = 2\nhistogram_bins = [16, 16, 8]\nhistogram_budget_mib = 64\n'
        '[maps]\nmask_fraction = 0.3\n[output]\ndirectory = "out"\n')
    c = load_config(path)
    assert c.simulation.detector == "eiger2_500k" and c.simulation.shape == (20, 30)
    assert c.simulation.counts == 1e5 and isinstance(c.simulation.n_angles, int)
    assert c.accumulation.histogram_bins == (16, 16, 8) and c.accumulation.threshold == 2.0
    assert c.maps.mask_fraction == 0.3 and c.output.directory == "out"
    auto = config_from_dict({"accumulation": {"histogram_bins": "auto"}})
    assert auto.accumulation.histogram_bins is None


@pytest.mark.parametrize("data, message", [
    ({"simulation": {"detektor": "x"}}, "unknown key simulation.detektor; allowed: "),
    ({"simulatoin": {}}, r"unknown section \[simulatoin\]"),
    ({"simulation": {"detector": "pilatus"}}, "simulation.detector = 'pilatus' is not one of maxipix_2x2, eiger2_500k"),
    ({"simulation": {"shape": [40]}}, "simulation.shape must be a list of 2 numbers"),
    ({"simulation": {"n_angles": 2.5}}, "simulation.n_angles must be an integer"),
    ({"simulation": {"n_angles": 0}}, "simulation.n_angles must be positive"),
    ({"maps": {"mask_fraction": 1.5}}, "maps.mask_fraction must lie between 0 and 1"),
    ({"accumulation": {"histogram_dtype": "int8"}}, "accumulation.histogram_dtype = 'int8' is not one of"),
    ({"accumulation": {"threshold": "high"}}, "accumulation.threshold must be a number"),
])
def test_errors_name_the_key_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[simulation\nshape = ")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "missing.toml")


def test_overrides_replace_only_given_values():
    c = override(Config(), "simulation", shape=[10, 12], seed=None)
    assert c.simulation.shape == (10, 12) and c.simulation.seed == 0
    c = override(c, "accumulation", histogram_bins=[0, 0, 0])
    assert c.accumulation.histogram_bins == (0, 0, 0)
    with pytest.raises(ConfigError, match="simulation.n_angles must be positive"):
        override(c, "simulation", n_angles=-1)


def test_q_rois_from_toml_tables_and_errors_name_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[accumulation.q_rois]]\nname = "peak0"\nlo = [-0.01, -0.01, 1.32]\n'
                    'hi = [0.01, 0.01, 1.33]\nshape = "ellipsoid"\n')
    (roi,) = load_config(path).accumulation.q_rois
    assert (roi.name, roi.shape, roi.hi[2]) == ("peak0", "ellipsoid", 1.33)
    path.write_text('[[accumulation.q_rois]]\nname = "p"\nlo = [0, 0, 1.4]\nhi = [1, 1, 1.3]\n')
    with pytest.raises(ConfigError, match="accumulation.q_rois: .*must exceed lo"):
        load_config(path)


# ---- masks, invalid counts and scan files (issue 11, items 8 and 9) ----------------------------
def test_pixel_mask_and_max_valid_counts_keys(tmp_path):
    np.save(tmp_path / "mask.npy", np.zeros((4, 4)))
    path = tmp_path / "c.toml"
    path.write_text('[accumulation]\npixel_mask = "mask.npy"\nmax_valid_counts = 1e6\n')
    c = load_config(path)                         # the mask is named relative to the file
    assert c.accumulation.pixel_mask == str(tmp_path / "mask.npy")
    assert c.accumulation.max_valid_counts == 1e6
    with pytest.raises(ConfigError, match="accumulation.pixel_mask: cannot read the mask"):
        config_from_dict({"accumulation": {"pixel_mask": str(tmp_path / "nope.npy")}})
    with pytest.raises(ConfigError, match="accumulation.max_valid_counts must be positive"):
        config_from_dict({"accumulation": {"max_valid_counts": 0}})
    assert override(c, "accumulation", histogram_bins=[0, 0, 0]).accumulation.pixel_mask == \
        c.accumulation.pixel_mask


def write_scan_file(path, scenario, **changes) -> None:
    data = {"scan": scenario.scan.describe(), "geometry": scenario.geometry.describe()}
    for key, value in changes.items():
        table, _, name = key.rpartition("__")
        target = data
        for part in table.split("__") if table else []:
            target = target[part]
        target[name] = value
    path.write_text(json.dumps(data))


def test_a_scan_file_round_trips_and_may_bring_a_mask(small_scenario, tmp_path):
    path = tmp_path / "scan.json"
    write_scan_file(path, small_scenario)
    scan, geometry = load_scan_file(path)
    assert scan == small_scenario.scan and geometry.describe() == {
        **small_scenario.geometry.describe(),
        "detector": {**small_scenario.geometry.describe()["detector"], "masked_pixels": 0}}
    mask = np.zeros(small_scenario.geometry.detector.shape, bool)
    mask[3, 4:9] = True
    np.save(tmp_path / "m.npy", mask)
    write_scan_file(path, small_scenario, pixel_mask="m.npy")
    np.testing.assert_array_equal(load_scan_file(path)[1].detector.mask, mask)


@pytest.mark.parametrize("changes, message", [
    ({"pixel_mak": "m.npy"}, "unknown key pixel_mak; allowed: geometry, pixel_mask, scan"),
    ({"scan__shap": [1, 2]}, "unknown key scan.shap; allowed: extents_um, "),
    ({"geometry__energy": 8330}, "unknown key geometry.energy; allowed: "),
    ({"geometry__detector__pixel_size": 5e-5}, "unknown key geometry.detector.pixel_size; "),
    ({"geometry__energy_ev": 8.33}, "energy_ev 8.33 eV is outside .*did you mean 8330 eV"),
    ({"geometry__wavelength_a": 2.0},
     "geometry.energy_ev .* and geometry.wavelength_a 2.0 disagree"),
    ({"geometry__detector__distance_m": 830}, "did you mean 0.83 m"),
])
def test_a_scan_file_is_as_strict_as_the_configuration(small_scenario, tmp_path, changes, message):
    path = tmp_path / "scan.json"
    write_scan_file(path, small_scenario, **changes)
    with pytest.raises(ConfigError, match=f"scan file {path}: .*{message}"):
        load_scan_file(path)


def test_a_bad_scan_file_stops_process_with_exit_2(small_scenario, tmp_path, capsys):
    path = tmp_path / "scan.json"
    write_scan_file(path, small_scenario, scan__rocking_angels=[1.0])
    code = main(["process", "--connect", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o.h5"),
                 "--scan-file", str(path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key scan.rocking_angels" in err[0]


# ---- one configuration tree (issue 12, item 4) --------------------------------------------------
def tree_keys() -> list[tuple[str, str]]:
    """(section, key) of every setting of the tree."""
    return [(s.name, f.name) for s in dataclasses.fields(Config)
            for f in dataclasses.fields(getattr(Config(), s.name))]


LIVE_FILE = """version = 1
[live]
policy = "drop"
frame_queue_messages = 3
frame_queue_mib = 1.5
writer_queue_jobs = 2
writer_queue_mib = 8
hold_frames = 7
join_timeout_s = 0.5
snapshot_max_hz = 2.5
checkpoints = false
keep_results = 5
decode_threads = 3
"""


def test_every_live_key_reaches_the_processor(tmp_path):
    path = tmp_path / "live.toml"
    path.write_text(LIVE_FILE)
    config = load_config(path)
    defaults = LiveSettings()
    assert {f.name for f in dataclasses.fields(LiveSettings)} == set(
        tomllib.loads(LIVE_FILE)["live"])
    assert all(getattr(config.live, f.name) != getattr(defaults, f.name)
               for f in dataclasses.fields(LiveSettings))
    live = LiveProcessor(None, settings=config)     # not started: nothing takes frames out
    try:
        for index in range(5):                    # policy "drop" with room for 3 messages
            live.submit(ImageFrame(1, index, np.zeros((4, 4), np.uint32), "u"))
        status = live.status()
        assert (status.queued, status.dropped) == (3, 2)
        assert live._frames.max_bytes == int(1.5 * 2**20)
        assert (live.writer.jobs.max_items, live.writer.jobs.max_bytes) == (2, 8 * 2**20)
        assert live.results.maxlen == 5
        for unit in (live.worker, live.writer, live._snapshots):   # read where they act
            assert unit.settings.live is config.live
    finally:
        live.stop()


def test_hold_join_and_checkpoint_keys_act_in_a_running_processor(tmp_path):
    """Frames whose positions never come: at most ``hold_frames`` wait, the rest are placed by
    index; the ended series waits ``join_timeout_s``; with ``checkpoints = false`` its
    incomplete results leave no checkpoint."""
    from conftest import detector_start, plan_start, wait_until

    from sxdm_stream.simulators.scenarios import default_scenario
    from sxdm_stream.sinks.checkpoint import checkpoint_path

    path = tmp_path / "live.toml"
    path.write_text("[live]\nhold_frames = 4\njoin_timeout_s = 0.3\ncheckpoints = false\n")
    scenario = default_scenario(shape=(3, 3), n_angles=2)
    out = tmp_path / "r.h5"
    live = LiveProcessor(None, out=out, settings=load_config(path), max_series=1).start()
    try:
        live.submit(detector_start(scenario, "c1"))
        live.submit(plan_start(scenario, "c1"))
        for index in range(10):                   # their positions never come
            live.submit(ImageFrame(1, index, scenario.simulator.frame(*scenario.scan.locate(
                index)), "u1"))
        wait_until(lambda: live.status().placed_by_index == 6)
        assert live.status().held == 4
        ended = time.monotonic()
        live.submit(SeriesEnd(1, "u1"))
        assert live.wait(30), live.status()
        waited = time.monotonic() - ended
    finally:
        live.stop()
    assert 0.3 <= waited < 5, waited              # the default would wait 10 s
    (result,) = live.results
    assert not result.complete and result.written
    assert out.exists() and not checkpoint_path(out).exists()


def test_command_line_flags_override_the_live_section(tmp_path):
    path = tmp_path / "live.toml"
    path.write_text(LIVE_FILE)
    common = ["process", "--connect", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o.h5"),
              "--config", str(path)]
    from_file = config_from_args(build_parser().parse_args(common))
    assert from_file.live == load_config(path).live
    flagged = config_from_args(build_parser().parse_args(common + ["--policy", "block"]))
    assert flagged.live == dataclasses.replace(from_file.live, policy="block")
    assert config_from_args(build_parser().parse_args(common[:5])).live == LiveSettings()


@pytest.mark.parametrize("version, message", [
    (2, r"version = 2: the file is written for a newer sxdm-stream; this sxdm-stream \(.*\) "
        r"reads configuration format 1: upgrade sxdm-stream"),
    (0, r"version = 0 is not a configuration format; this sxdm-stream \(.*\) reads "
        r"configuration format 1"),
    (-1, r"version = -1 is not a configuration format"),
    ("1", r"version must be an integer, the configuration format \(1\), got '1'"),
    (1.0, r"version must be an integer"),
])
def test_a_newer_old_or_unknown_version_is_refused_with_a_clear_message(tmp_path, version,
                                                                        message):
    path = tmp_path / "c.toml"
    path.write_text(f"version = {json.dumps(version)}\n[maps]\nmask_fraction = 0.3\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {message}"):
        load_config(path)


def test_a_file_without_version_is_format_1():
    assert CONFIG_VERSION == 1
    with_version = config_from_dict({"version": 1, "maps": {"mask_fraction": 0.3}})
    assert config_from_dict({"maps": {"mask_fraction": 0.3}}) == with_version


@pytest.mark.parametrize("data, message", [
    ({"live": {"polcy": "drop"}}, "unknown key live.polcy; allowed: checkpoints, "
                                  "decode_threads, frame_queue_messages, frame_queue_mib, "),
    ({"live": {"queue_size": 8}}, "unknown key live.queue_size: it is called "
                                  "live.frame_queue_messages"),
    ({"live": {"snapshot_hz": 8}}, "unknown key live.snapshot_hz: it is called "
                                   "live.snapshot_max_hz"),
    ({"live": {"fits": True}}, "unknown key live.fits: it is called fits.enabled"),
    ({"maps": {"d_ref": 4.7}}, "unknown key maps.d_ref: it is called maps.d_ref_a"),
    ({"live": {"mask_fraction": 0.1}}, "unknown key live.mask_fraction: it is called "
                                       "maps.mask_fraction"),
    ({"policy": "drop"}, "unknown key policy; allowed at the top: version, and the sections "
                         "simulation, accumulation, "),
    ({"live": {"policy": "fast"}}, "live.policy = 'fast' is not one of block, drop"),
    ({"live": {"hold_frames": 0}}, "live.hold_frames must be positive, got 0"),
    ({"live": {"frame_queue_mib": -1}}, "live.frame_queue_mib must be positive"),
    ({"live": {"join_timeout_s": -1}}, "live.join_timeout_s must not be negative"),
    ({"live": {"checkpoints": "yes"}}, "live.checkpoints must be true or false"),
    ({"live": {"keep_results": 2.5}}, "live.keep_results must be an integer"),
    ({"live": {"decode_threads": -1}}, "live.decode_threads must not be negative, got -1"),
    ({"live": {"decode_threads": 1.5}}, "live.decode_threads must be an integer"),
    ({"maps": {"d_ref_a": -4.7}}, "maps.d_ref_a must be positive, got -4.7"),
    ({"particles": {"connectivity": 3}}, "particles.connectivity = 3 is not one of 1, 2"),
    ({"drift": {"min_correlation": 2}}, "drift.min_correlation must lie between 0 and 1"),
    ({"fits": {"enabled": 1}}, "fits.enabled must be true or false"),
    ({"roi_suggestion": {"enable": False}}, "unknown key roi_suggestion.enable; allowed: enabled"),
])
def test_an_unknown_key_or_value_is_an_error_naming_it(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(data)


def test_live_settings_from_python_are_checked_as_a_file_is():
    with pytest.raises(ConfigError, match="live.policy = 'fast' is not one of block, drop"):
        LiveSettings(policy="fast")
    with pytest.raises(ConfigError, match="live.writer_queue_jobs must be positive"):
        LiveSettings(writer_queue_jobs=0)


def test_d_ref_and_mask_fraction_have_one_name_each(small_processed):
    names = [f"{section}.{key}" for section, key in tree_keys()]
    assert [n for n in names if "d_ref" in n] == ["maps.d_ref_a"]
    assert [n for n in names if "mask_fraction" in n] == ["maps.mask_fraction"]
    # the live, file and analysis settings hold no copy of their own: they are sections
    assert {f.name for f in dataclasses.fields(AnalysisSettings)} == {
        "maps", "drift", "particles", "fits", "roi_suggestion", "phases"}
    config = config_from_dict({"maps": {"mask_fraction": 0.3, "d_ref_a": 4.7}})
    assert config.analysis.maps is config.maps
    maps = analyse(small_processed.accumulator, config.analysis).maps
    assert (maps.d_ref, maps.mask_fraction) == (4.7, 0.3)
    default = analyse(small_processed.accumulator, Config().analysis).maps
    assert default.d_ref == pytest.approx(float(np.mean(default.d_spacing[default.mask])))


def test_the_old_spelling_of_the_mean_d_reference_reads_with_a_warning(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text("[maps]\nmask_fraction = 0.3\nd_ref_a = 0\n")
    with pytest.warns(ConfigDeprecationWarning, match=r"maps.d_ref_a = 0 .* leave maps.d_ref_a "
                                                      r"out"):
        config = load_config(path)
    assert config.maps.d_ref_a is None and config.maps.mask_fraction == 0.3


def test_every_key_is_documented_with_its_default():
    doc = config_module.__doc__
    block = doc[doc.index("\n    version = 1") + 1:doc.index("\nWhere things are")]
    text = "\n".join(line[4:] for line in block.splitlines())
    documented = config_from_dict(tomllib.loads(text))   # its values are the defaults
    no_rois = dataclasses.replace(documented.accumulation, q_rois=())
    assert dataclasses.replace(documented, accumulation=no_rois) == Config()
    page = DOCS.read_text()
    for section, key in tree_keys():
        spelled = rf"^\[\[{section}\.{key}\]\]" if key == "q_rois" else rf"^#? *{key} = "
        assert re.search(spelled, text, re.M), f"{section}.{key} not in the docstring"
        assert any(spelling in page for spelling in (
            f"| `{key}` |", f"`{section}.{key}`", f"[[{section}.{key}]]")), f"{section}.{key}"


def test_the_complete_example_of_the_docs_loads_and_sets_every_key():
    page = DOCS.read_text()
    example = page[page.index("```toml\n") + 8:]
    example = tomllib.loads(example[:example.index("```")])
    config = config_from_dict(example)
    for section, key in tree_keys():
        assert key in example[section], f"the example lacks {section}.{key}"
    assert config.live.policy == "drop" and config.maps.d_ref_a == 4.7333
    assert len(config.accumulation.q_rois) == 2 and config.fits.enabled


def test_rois_output_is_a_configuration_file(tmp_path, capsys):
    """``sxdm-stream rois X.h5 > rois.toml`` writes a file --config accepts."""
    from sxdm_stream.analysis.roi_suggest import format_roi_suggestion, suggest_rois
    from sxdm_stream.core.grid import QGrid
    from sxdm_stream.sinks.nexus import json_default
    from sxdm_stream.sinks.results import FORMAT_VERSION

    grid = QGrid.from_bounds((-0.01, -0.02, 1.30), (0.01, 0.02, 1.34), (24, 28, 40))
    axes = np.meshgrid(*(grid.centres(a) for a in range(3)), indexing="ij")
    histogram = 0.01 + sum(
        counts * np.exp(-0.5 * sum(((x - c) / s) ** 2 for x, c, s in zip(axes, centre, sigma)))
        for centre, sigma, counts in [((0.001, 0.0, 1.315), (2e-3, 3e-3, 1.5e-3), 2e4),
                                      ((-0.002, 0.004, 1.327), (1.5e-3, 2e-3, 1.2e-3), 5e3)])
    suggestion = suggest_rois(histogram, grid)
    assert len(suggestion.rois) == 2
    results = tmp_path / "scan.h5"
    with h5py.File(results, "w") as f:                 # what the results writer leaves
        f.attrs.update(creator="sxdm-stream test", sxdm_stream_format=FORMAT_VERSION)
        ds = f.create_group("entry").create_dataset(
            "roi_suggestion", data=json.dumps(suggestion.describe(), default=json_default))
        ds.attrs["text"] = format_roi_suggestion(suggestion)
    assert main(["rois", str(results)]) == 0
    rois_file = tmp_path / "rois.toml"
    rois_file.write_text(capsys.readouterr().out)
    assert load_config(rois_file).accumulation.q_rois == suggestion.rois
