"""Runs across namespace hosts: a 2-node x 1-rank ZeRO-2 job whose ranks meet over gloo on the
veth links, the driver on the head (a host with no GPU), every rank on its own host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.cluster.jobs import job_dir, two_host_plan

pytestmark = [pytest.mark.integration, pytest.mark.root]


def _run_dir(runs: Path) -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


def test_two_node_zero2_job_spans_two_hosts(cluster, tmp_path: Path) -> None:
    plan = two_host_plan(tmp_path, steps=6, every=3)
    runs = tmp_path / "runs"
    out = cluster.sl(cluster.bed.hosts[0], "launch", str(plan), "--runs-dir", str(runs), "--address", cluster.address,
                     "--no-dashboard", timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    jd = job_dir(runs, _run_dir(runs).name)
    seen = [json.loads(p.read_text()) for p in sorted((jd / "seen").glob("rank-*.json"))]
    assert sorted(s["rank"] for s in seen) == [0, 1]
    hosts = {h.ip for h in cluster.bed.hosts[1:]}
    assert {s["master_addr"] for s in seen} <= hosts and len({s["node_id"] for s in seen}) == 2
    result = json.loads((jd / "result.json").read_text())
    assert result["status"] == "succeeded" and result["dist"] == {"backend": "gloo", "world_size": 2}
