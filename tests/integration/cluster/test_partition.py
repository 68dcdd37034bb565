"""A network partition that heals: the link of one of a 2-node job's hosts down for 10 s, then up.
Shorter than Ray's node-death threshold and the supervisor's hang timeouts, it must cost a stall
and nothing else: one attempt, no restart racing the old ranks, every checkpoint written once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from launcher.journal import Journal
from launcher.layout import RunDir

from tests.integration.cluster.jobs import JOB, job_of, host_of_rank, job_dir, seen, two_host_plan

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.timeout(1200)]


def test_a_ten_second_partition_heals_without_a_second_attempt(cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    head = cluster.bed.hosts[0]
    run = cluster.launch_detached(head, two_host_plan(tmp_path, steps=600, every=40), runs)
    cluster.wait(head, runs, run, lambda st: (job_of(st)["step"] or 0) >= 50, 600, "the job reaching step 50")
    cut = host_of_rank(cluster, runs, run, rank=1, attempt=1)
    step_at_cut = job_of(cluster.status(head, runs, run))["step"]
    cluster.bed.link(cut, False)
    try:
        time.sleep(10)
        step_in_cut = job_of(cluster.status(head, runs, run))["step"]
    finally:
        cluster.bed.link(cut, True)
    t_healed = time.time()
    try:
        st = cluster.wait(head, runs, run, lambda st: (job_of(st)["step"] or 0) > step_in_cut + 5
                          or st["state"] != "running", 300, "training moving again after the partition")
        t_moving = time.time()
        st = cluster.wait(head, runs, run, lambda st: st["state"] in ("succeeded", "failed"), 900, "the run ending")
        job = job_of(st)
        assert st["state"] == "succeeded", st
        assert [a["n"] for a in job["attempts"]] == [1], job["attempts"]
        assert sorted((s["rank"], s["attempt"]) for s in seen(runs, run)) == [(0, 1), (1, 1)]
        # Every checkpoint the journal saw was written by that one attempt, each step once.
        j = Journal(RunDir(runs / run).db, readonly=True)
        try:
            rows = [(r["attempt"], r["step"]) for r in j.checkpoints(JOB)]
        finally:
            j.close()
        assert rows and {a for a, _ in rows} == {1} and len({s for _, s in rows}) == len(rows), rows
        assert {p.name for p in (job_dir(runs, run) / "checkpoints").iterdir()} <= {f"checkpoint-{s}" for _, s in rows}
        print(f"\npartition: step {step_at_cut} at the cut, {step_in_cut} after 10 s cut off, training moving "
              f"again {t_moving - t_healed:.1f}s after the link came back; one attempt")
    finally:
        # The host stays in the cluster (10 s is under Ray's node-death threshold); rejoin if it did not.
        if cut.ip not in cluster.node_ips().values():
            cluster.rejoin(cut)
