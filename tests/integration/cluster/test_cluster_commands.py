"""The cluster commands on four namespace hosts: a head with token auth, workers joined over the
veth links, status from any host, a join without the token refused, down leaving nothing."""

from __future__ import annotations

import json
import shutil
import stat

import pytest

from tests.integration.cluster.conftest import cluster_args

pytestmark = [pytest.mark.integration, pytest.mark.root]


def test_up_join_status_reports_every_host(cluster) -> None:
    assert stat.S_IMODE(cluster.token.stat().st_mode) == 0o600
    out = cluster.sl(cluster.bed.hosts[2], "cluster", "status", "--address", cluster.address, "--token",
                     str(cluster.token), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    nodes = [n for n in json.loads(out.stdout)["nodes"] if n["alive"]]   # a host rejoined by a test left a dead entry
    assert sorted(n["ip"] for n in nodes) == [h.ip for h in cluster.bed.hosts]
    assert {n["ip"]: (n["role"], n["gpus"]) for n in nodes} == {
        "198.18.0.10": ("head", 0), "198.18.0.11": ("worker", 1), "198.18.0.12": ("worker", 1),
        "198.18.0.13": ("worker", 1)}
    assert {(n["version"], n["ray_version"]) for n in nodes} == {(nodes[0]["version"], nodes[0]["ray_version"])}


def test_a_host_without_the_token_cannot_join_or_read(cluster, tmp_path) -> None:
    wrong = tmp_path / "other_token"
    wrong.write_text("0" * 64)
    wrong.chmod(0o600)
    host = cluster.bed.hosts[2]
    out = cluster.sl(host, "cluster", "status", "--address", cluster.address, "--token", str(wrong), timeout=120)
    assert out.returncode != 0 and "Authentication token is missing or incorrect" in out.stdout + out.stderr


def test_down_stops_only_its_own_host(cluster) -> None:
    """A fourth Ray daemon set joined from host 2 under another state dir, then downed: host 2's
    first worker and the rest of the cluster are untouched."""
    host = cluster.bed.hosts[2]
    before = set(host.pids())
    state = cluster.state.with_name(cluster.state.name + "b")
    args = cluster_args(cluster, 0)
    args[args.index("--state-dir") + 1] = str(state)
    out = cluster.sl(host, "cluster", "join", cluster.address, *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(host.pids()) > before
    out = cluster.sl(host, "cluster", "down", "--state-dir", str(state))
    assert out.returncode == 0, out.stdout + out.stderr
    after = set(host.pids())
    shutil.rmtree(state, ignore_errors=True)
    assert before <= after and not (after - before), after - before
