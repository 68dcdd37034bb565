"""`bin/launch --address` on a cluster that is still growing: a 3-node job is launched while only
two workers are up; the launch says what it waits for, and starts once the third host joins."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.integration.launcher.conftest import write_plan

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.timeout(900)]


def test_a_launch_waits_for_the_host_that_joins_late(cluster, tmp_path: Path) -> None:
    head, *_, late = cluster.bed.hosts
    out = cluster.sl(late, "cluster", "down", "--state-dir", str(cluster.state), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    plan = write_plan(tmp_path, """
name: three
jobs:
  wide:
    method: synthetic
    resources: {nodes: 3, gpus_per_node: 1}
    params: {steps: 10, step_time: 0.1}
""")
    runs = tmp_path / "runs"
    launch = subprocess.Popen(head.argv([sys.executable, "-m", "launcher", "launch", str(plan), "--runs-dir", str(runs),
                                         "--address", cluster.address, "--no-dashboard", "--wait-for-nodes", "300"]),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=cluster.env())
    try:
        seen = []
        while not (seen and seen[-1].startswith("waiting up to")):   # after Ray's own "Connecting" lines
            line = launch.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
        first = "".join(seen)
        assert "3 nodes" in seen[-1] or "nodes" in seen[-1], first
        t_join = time.time()
        joined = cluster.join(late)
        assert joined.returncode == 0, joined.stdout + joined.stderr
        rest, _ = launch.communicate(timeout=600)
        assert launch.returncode == 0, first + rest
        assert "cluster 4 nodes" in rest and "succeeded" in rest, rest
        print(f"\nlate host: the run went on {time.time() - t_join:.0f}s after the join began (join, placement, job)")
    finally:
        if launch.poll() is None:
            launch.kill()
        if late.ip not in cluster.node_ips().values():
            cluster.rejoin(late)
