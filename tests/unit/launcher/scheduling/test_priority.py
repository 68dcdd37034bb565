"""Critical-path priorities in seconds, and the lower bounds the benchmarks divide by."""

from __future__ import annotations

import pytest

from launcher.scheduling.bounds import bounds
from launcher.scheduling.priority import bottom_levels, priorities

NEEDS = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
SECONDS = {"a": 10.0, "b": 100.0, "c": 5.0, "d": 1.0}


def test_bottom_levels_are_the_longest_chain_in_seconds() -> None:
    assert bottom_levels(NEEDS, SECONDS) == {"a": 111.0, "b": 101.0, "c": 6.0, "d": 1.0}


def test_width_orders_ties_and_never_jumps_a_longer_chain() -> None:
    p = priorities({"x": (), "y": ()}, {"x": 10.0, "y": 10.0}, {"x": 8, "y": 1}, 8)
    assert p["x"] > p["y"]
    p = priorities({"x": (), "y": ()}, {"x": 10.0, "y": 11.0}, {"x": 8, "y": 1}, 8)
    assert p["y"] > p["x"]


def test_bounds() -> None:
    b = bounds(NEEDS, SECONDS, {j: 1 for j in NEEDS}, {"a": 8, "b": 1, "c": 4, "d": 8}, 2, 8)
    assert b.gpu_time_s == pytest.approx((80 + 100 + 20 + 8) / 16)
    assert (b.critical_path_s, b.work) == (111.0, 111.0)
    assert b.whole_node_s == pytest.approx((10 + 1) / 2)
