"""Configuration: TOML loading, validation messages that name the key, CLI overrides."""

import pytest

from sxdm_stream.config import Config, config_from_dict, load_config, override
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
