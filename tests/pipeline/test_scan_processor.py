"""ScanProcessor: a frame whose measured positions are not usable numbers is counted under its
reason and leaves the sums alone, whatever the network put there."""

import pytest

from sxdm_stream.core.accumulate import ScanSetup
from sxdm_stream.pipeline.scan_processor import ScanProcessor


@pytest.mark.parametrize("value", [10**400, -10**5000, "x", None, float("nan")],
                         ids=["10**400", "-10**5000", "text", "None", "NaN"])
def test_a_position_that_is_no_finite_float_is_a_bad_position(small_scenario, value, caplog):
    processor = ScanProcessor(ScanSetup(small_scenario.geometry, small_scenario.scan))
    scan = small_scenario.scan
    frame = small_scenario.simulator.frame(*scan.locate(0))
    assert not processor.add(0, frame, positions={scan.motors[0]: value, scan.motors[1]: 0.0})
    assert processor.counters.rejected == {"bad_position": 1}
    assert not processor.included.any() and not processor.accumulator.moments.any()
    assert all(len(record.getMessage()) < 300 for record in caplog.records)
