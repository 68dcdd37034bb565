"""A host that joins while a run is going is offered to the jobs waiting: three 1-GPU jobs start on a
cluster with two GPU hosts up, two run and one waits; the third host joins, and the waiting job starts
there while the other two still run (instead of after one of them ends)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.integration.launcher.conftest import write_plan

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.timeout(900)]


def test_a_host_that_joins_during_the_run_takes_the_job_that_waits(cluster, tmp_path: Path) -> None:
    head, *_, late = cluster.bed.hosts
    out = cluster.sl(late, "cluster", "down", "--state-dir", str(cluster.state), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    # Long enough that the join (a Ray node starting: ~10-20 s here) lands while the first two run.
    jobs = "".join(f"  j{i}:\n    method: synthetic\n    params: {{steps: 240, step_time: 0.25}}\n" for i in range(3))
    plan = write_plan(tmp_path, "name: grow\ndefaults:\n  resources: {nodes: 1, gpus_per_node: 1}\njobs:\n" + jobs)
    runs = tmp_path / "runs"
    try:
        run = cluster.launch_detached(head, plan, runs, "--wait-for-nodes", "0")

        def running(st: dict) -> list[str]:
            return [j["name"] for j in st["jobs"] if j["state"] == "running"]

        st = cluster.wait(head, runs, run, lambda st: len(running(st)) == 2, 300, "two jobs running")
        (waiting,) = [j["name"] for j in st["jobs"] if j["state"] in ("pending", "waiting")]
        t_join = time.time()
        joined = cluster.join(late)
        assert joined.returncode == 0, joined.stdout + joined.stderr
        st = cluster.wait(head, runs, run, lambda st: st["state"] in ("succeeded", "failed"), 600, "the run ending")
        assert st["state"] == "succeeded", st
        attempts = {j["name"]: j["attempts"] for j in st["jobs"]}
        assert all(len(a) == 1 for a in attempts.values()), attempts
        started = attempts[waiting][0]["started"]
        first_end = min(a[0]["ended"] for n, a in attempts.items() if n != waiting)
        assert started < first_end, attempts   # it ran beside the others, on the host that joined
        (seen,) = (runs / run / "jobs" / waiting / "seen").glob("rank-*.json")
        ips = cluster.node_ips()
        assert ips[json.loads(seen.read_text())["node_id"]] == late.ip
        with sqlite3.connect(runs / run / "run.db") as db:
            told = [m for (m,) in db.execute("SELECT message FROM events WHERE kind='cluster'")]
        assert any(" joined: 1 GPU(s)" in m for m in told), told
        print(f"\njoin during a run: {waiting} started {started - t_join:.1f}s after the join began, "
              f"{first_end - started:.0f}s before the first of the others ended")
    finally:
        if late.ip not in cluster.node_ips().values():
            cluster.rejoin(late)
