"""A worker host lost mid-run: its raylet killed while a 2-node job trains across two of three
worker hosts. The driver must see the loss, kill the surviving rank, and restart the job on the two
hosts that remain from its newest complete checkpoint; nothing may be left running on the lost host."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.integration.cluster.jobs import job_of, host_of_rank, kill_raylet, seen, two_host_plan

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.timeout(1200)]


def test_a_lost_worker_host_restarts_the_job_on_the_hosts_left(cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    head, *_ = cluster.bed.hosts
    # Tiny steps run at ~10/s here: enough of them that the loss lands mid-training.
    run = cluster.launch_detached(head, two_host_plan(tmp_path, steps=600, every=40), runs)
    # Past a complete checkpoint (saved at step 40, before step 41 starts) and into the next interval.
    cluster.wait(head, runs, run, lambda st: (job_of(st)["step"] or 0) >= 50, 600, "the job reaching step 50")
    lost = host_of_rank(cluster, runs, run, rank=0, attempt=1)   # the master's host: the harder loss
    kill_raylet(lost)
    t_lost = time.time()
    try:
        # Asked from a third host: status reads the shared run directory, not the driver.
        other = next(h for h in cluster.bed.hosts[1:] if h is not lost)
        st = cluster.wait(other, runs, run, lambda st: st["state"] in ("succeeded", "failed"), 900, "the run ending")
        job = job_of(st)
        assert st["state"] == "succeeded", st
        first, second = job["attempts"][0], job["attempts"][1]
        assert first["failure"] == "lost", first
        assert len(job["attempts"]) == 2, job["attempts"]
        # From the newest complete checkpoint at the loss: 40 (saved before step 50 was reached) or later,
        # and before the end: the loss came mid-training.
        assert 40 <= second["start_step"] < 600 and second["resumed_from"], second
        lost_ids = {s["node_id"] for s in seen(runs, run) if s["attempt"] == 1 and s["rank"] == 0}
        again = [s for s in seen(runs, run) if s["attempt"] == 2]
        assert sorted(s["rank"] for s in again) == [0, 1]
        assert not lost_ids & {s["node_id"] for s in again} and len({s["node_id"] for s in again}) == 2
        # The books learned of it too (Ray's node table), so no later job is offered that host.
        with sqlite3.connect(runs / run / "run.db") as db:
            told = [m for (m,) in db.execute("SELECT message FROM events WHERE kind='cluster'")]
        assert [m for m in told if m.startswith(f"node {next(iter(lost_ids))[:12]} left")], told
        print(f"\nnode loss: detected {first['ended'] - t_lost:.1f}s after the raylet was killed, attempt 2 "
              f"started {second['started'] - t_lost:.1f}s after, from step {second['start_step']}; "
              f"{first['lost_steps']} step(s) redone")
        # The lost host's workers and ranks went with its raylet: nothing of the run left there.
        deadline = time.monotonic() + 60
        while lost.pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not lost.pids(), f"left running on the lost host: {lost.pids()}"
    finally:
        cluster.rejoin(lost)
