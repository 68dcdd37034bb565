"""The node host's bookkeeping, in-process (its Ray wrapper adds nothing to these rules)."""

from __future__ import annotations

import pytest

from launcher.node.host import NodeHost
from launcher.node.messages import BundleInfo, Stopped

BUNDLE = BundleInfo("node-1", "198.18.0.2", "h1", ("0",))


def test_a_group_stopped_before_its_start_arrived_never_spawns(tmp_path) -> None:
    host = NodeHost("run-1")
    assert host.call("job/1/node0", "stop", 10.0) == Stopped({}, [], None, [])
    with pytest.raises(RuntimeError, match="stopped before its ranks were started"):
        host.start("job/1/node0", "job", 1, 0, [0], 1, str(tmp_path), BUNDLE, str(tmp_path / "job-1.json"), None, None, {})
    host.close("job/1/node0")
    assert host.slots == {}


def test_unknown_calls_and_groups_are_errors() -> None:
    host = NodeHost("run-1")
    with pytest.raises(ValueError, match="no such group call: start"):   # start has its own entry point
        host.call("job/1/node0", "start")
    with pytest.raises(KeyError, match="no rank group job/1/node0"):
        host.call("job/1/node0", "poll")
    host.close("never-opened")   # nothing to do, no error
