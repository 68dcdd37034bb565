"""The namespace test bed and a Ray cluster on it, started with the cluster commands themselves."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.helpers import REPO
from tests.integration.cluster import netns

PORT = 6379


HOSTS = 4   # a head without GPUs and three workers: a 2-node job that loses one still has two hosts


# One bed and one cluster for the cluster tests: each costs half a minute of CPU to start, and a
# test that breaks a host (node loss, partition) puts it back with `Cluster.rejoin`. Package scope,
# not session: four idle Ray nodes left running would take CPU from every test after these.
@pytest.fixture(scope="package")
def bed():
    why = netns.why_not()
    if why:
        pytest.skip(f"no namespace test bed: {why}")
    b = netns.create(HOSTS)
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


    def launch_detached(self, host: netns.Host, plan: Path, runs: Path, *extra: str) -> str:
        """`sl launch PLAN --address HEAD --detach` from a host: the run's id (the driver stays in that host)."""
        out = self.sl(host, "launch", str(plan), "--runs-dir", str(runs), "--address", self.address, "--no-dashboard",
                      "--detach", "--json", *extra, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)["run"]

    def status(self, host: netns.Host, runs: Path, run: str) -> dict:
        out = self.sl(host, "status", run, "--runs-dir", str(runs), "--json", timeout=120)
        assert out.stdout.strip(), out.stderr
        return json.loads(out.stdout)

    def wait(self, host: netns.Host, runs: Path, run: str, done: Callable[[dict], bool], timeout: float,
             what: str) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(host, runs, run)
            if done(st):
                return st
            time.sleep(1.0)
        raise AssertionError(f"{what}: not within {timeout:.0f}s; last status {json.dumps(st)[-3000:]}")

    def node_ips(self) -> dict[str, str]:
        """Ray node id -> host IP, the live nodes, as `sl cluster status --json` reports them."""
        out = self.sl(self.bed.hosts[0], "cluster", "status", "--address", self.address, "--token", str(self.token),
                      "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        return {n["id"]: n["ip"] for n in json.loads(out.stdout)["nodes"] if n["alive"]}

    def join(self, host: netns.Host):
        return self.sl(host, "cluster", "join", self.address, *cluster_args(self, 1))

    def rejoin(self, host: netns.Host) -> None:
        """Bring a host that a test broke back: its link up, whatever is left of its Ray stopped, joined again."""
        self.bed.link(host, True)
        self.sl(host, "cluster", "down", "--state-dir", str(self.state), timeout=120)
        out = self.join(host)
        assert out.returncode == 0, out.stdout + out.stderr


def cluster_args(c: Cluster, gpus: int) -> list[str]:
    return ["--state-dir", str(c.state), "--token", str(c.token), "--gpus", str(gpus), "--num-cpus", "8"]


@pytest.fixture(scope="package")
def cluster(bed, tmp_path_factory):
    """A head (no GPUs) in host 0 and three workers with one logical GPU each, joined with the token."""
    tmp = tmp_path_factory.mktemp("cluster")
    # Ray's sockets live under the state dir and a socket path holds 107 bytes: pytest's tmp is too deep.
    c = Cluster(bed, Path("/tmp") / f"{bed.tag}", tmp / "secrets" / "ray_token")
    head, *workers = bed.hosts
    out = c.sl(head, "cluster", "up", "--port", str(PORT), "--no-dashboard", *cluster_args(c, 0))
    assert out.returncode == 0, out.stdout + out.stderr
    for w in workers:
        out = c.join(w)
        assert out.returncode == 0, out.stdout + out.stderr
    try:
        yield c
    finally:
        # Every host at once: each down waits for its own Ray to drain.
        with ThreadPoolExecutor(len(bed.hosts)) as pool:
            list(pool.map(lambda h: c.sl(h, "cluster", "down", "--state-dir", str(c.state), timeout=120), bed.hosts))
        shutil.rmtree(c.state, ignore_errors=True)
