"""The namespace test bed and a Ray cluster on it, started with the cluster commands themselves."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.integration.cluster import netns

PORT = 6379


@pytest.fixture(scope="module")
def bed():
    why = netns.why_not()
    if why:
        pytest.skip(f"no namespace test bed: {why}")
    b = netns.create(3)
    try:
        yield b
    finally:
        left = b.teardown()
        assert not left, f"processes that would not die in the bed's namespaces: {left}"
        assert not [ns for ns in netns.namespaces() if ns.startswith(b.tag)]


@dataclass
class Cluster:
    bed: netns.TestBed
    state: Path
    token: Path

    @property
    def address(self) -> str:
        return f"{self.bed.hosts[0].ip}:{PORT}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "RAY_AUTH_TOKEN_PATH": str(self.token), "RAY_USAGE_STATS_ENABLED": "0"}

    def sl(self, host: netns.Host, *args: str, timeout: float = 240):
        """`sl ARGS` (what bin/cluster, bin/launch ... run) on a host of the bed."""
        return host.run([sys.executable, "-m", "launcher", *args], timeout=timeout, cwd=REPO, env=self.env())


def cluster_args(c: Cluster, gpus: int) -> list[str]:
    return ["--state-dir", str(c.state), "--token", str(c.token), "--gpus", str(gpus), "--num-cpus", "8"]


@pytest.fixture(scope="module")
def cluster(bed, tmp_path_factory):
    """A head (no GPUs) in host 0 and two workers with one logical GPU each, joined with the token."""
    tmp = tmp_path_factory.mktemp("cluster")
    # Ray's sockets live under the state dir and a socket path holds 107 bytes: pytest's tmp is too deep.
    c = Cluster(bed, Path("/tmp") / f"{bed.tag}", tmp / "secrets" / "ray_token")
    head, *workers = bed.hosts
    out = c.sl(head, "cluster", "up", "--port", str(PORT), "--no-dashboard", *cluster_args(c, 0))
    assert out.returncode == 0, out.stdout + out.stderr
    for w in workers:
        out = c.sl(w, "cluster", "join", c.address, *cluster_args(c, 1))
        assert out.returncode == 0, out.stdout + out.stderr
    try:
        yield c
    finally:
        for h in bed.hosts:
            c.sl(h, "cluster", "down", "--state-dir", str(c.state), timeout=120)
        shutil.rmtree(c.state, ignore_errors=True)
