"""Configuration: TOML loading, validation messages that name the key, CLI overrides."""

import json

import numpy as np
import pytest

from sxdm_stream.cli.main import main
from sxdm_stream.config import Config, config_from_dict, load_config, load_scan_file, override
from sxdm_stream.errors import ConfigError


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
