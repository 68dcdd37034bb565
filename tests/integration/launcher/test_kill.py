"""bin/kill against a driver that does not answer (issue 11): a SIGSTOPped driver never reads the
kill request, so `bin/kill --force RUN` SIGKILLs it and everything under it (verified by PID and
start time), waits for its driver lock to drop, sweeps every recorded process of the run and puts
the kill in the journal itself."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launcher import driver_lock, procs
from launcher.journal import Journal, ProcessRecord
from launcher.lifecycle import DriverInfo, sweep
from tests.helpers import REPO
from tests.integration.launcher.conftest import (job, run_processes, start_detached, status, synthetic_plan, wait_for,
                                                 write_plan)

pytestmark = pytest.mark.integration


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _journal(runs: Path, run: str) -> tuple[DriverInfo, list[ProcessRecord]]:
    j = Journal(runs / run / "run.db", readonly=True)
    try:
        return DriverInfo.of(j), j.processes()
    finally:
        j.close()


def _alive(records: list[ProcessRecord]) -> list[int]:
    return [r.pid for r in records if procs.Owned(r.pid, r.create_time).process() is not None]


def _tree(driver: DriverInfo) -> list[procs.Owned]:
    p = procs.Owned(driver.pid, driver.create_time).process()
    return [procs.Owned(c.pid, procs.start_time(c)) for c in p.children(recursive=True)] if p else []


@pytest.fixture
def stopped_driver_cleanup():
    """Whatever the test leaves (a stopped driver, its Ray, the ranks), killed by PID and start time."""
    left: list[tuple[Path, str]] = []
    yield left
    for runs, run in left:
        driver, _ = _journal(runs, run)
        tree = _tree(driver)
        driver.signal(signal.SIGKILL)
        procs.kill_verified(tree, None, signal.SIGKILL)
        procs.wait_gone([procs.Owned(driver.pid, driver.create_time), *tree], None, 30)
        j = Journal(runs / run / "run.db", readonly=True)
        try:
            sweep(j, run, grace=0.0)
        finally:
            j.close()


def test_force_kill_of_a_stopped_driver_kills_it_and_sweeps_the_run(runs: Path, tmp_path: Path,
                                                                   stopped_driver_cleanup) -> None:
    # Long enough never to finish by itself; each rank also starts a child in its own session, which
    # the agents' death does not reach (no parent-death signal): bin/kill must.
    plan = synthetic_plan("spawn_child: true", steps=5000, every=50, hang="{startup: 60, step: 30}", name="wedged")
    run = start_detached(write_plan(tmp_path, plan), runs)
    stopped_driver_cleanup.append((runs, run))
    wait_for(runs, run, lambda s: job(s, "train")["state"] == "running" and (job(s, "train")["step"] or 0) >= 3,
             what="step 3")
    # The driver records the ranks' children from its polls: stop it only once both are on record.
    deadline = time.time() + 60
    while len([r for r in _journal(runs, run)[1] if r.role == "child"]) < 2 and time.time() < deadline:
        time.sleep(0.3)
    driver, records = _journal(runs, run)
    ranks = [r for r in records if r.role == "rank"]
    assert len(ranks) == 2 and len([r for r in records if r.role == "child"]) == 2, records
    assert driver.alive()
    # Everything the driver started (its Ray, the agents, the ranks), to see that it all goes.
    tree = _tree(driver)
    assert len(tree) > len(records), tree   # Ray's processes besides the ranks and their children
    os.kill(driver.pid, signal.SIGSTOP)
    deadline = time.time() + 10   # the signal is delivered when the driver next runs
    while psutil.Process(driver.pid).status() != psutil.STATUS_STOPPED and time.time() < deadline:
        time.sleep(0.05)
    assert psutil.Process(driver.pid).status() == psutil.STATUS_STOPPED

    t0 = time.time()
    out = _cli("kill", run, "--runs-dir", str(runs), "--force", timeout=180)
    took = time.time() - t0   # printed, not asserted
    assert out.returncode == 0, out.stdout + out.stderr
    assert "not responding" in out.stdout and f"SIGKILLed the driver (pid {driver.pid})" in out.stdout, out.stdout
    # --force gives a driver that did not read the request its short wait, not --timeout's 120 s
    waited = re.search(r"has not read the request to kill the run in (\d+)s", out.stdout)
    assert waited and int(waited.group(1)) < 120, out.stdout

    assert not driver.alive()
    assert not driver_lock.is_held(runs / run / "driver.lock")
    assert _alive(records) == [], "recorded processes of the run survived bin/kill --force"
    assert run_processes(run) == [], "processes carrying the run's marker survived bin/kill --force"
    st = status(runs, run)
    assert st["state"] == "killed" and st["driver"] is None, st
    assert job(st, "train")["state"] == "killed" and job(st, "train")["attempts"][-1]["failure"] == "killed"
    assert list((runs / run / "control").glob("kill-*.json")) == []   # no stale request for a later bin/resume
    j = Journal(runs / run / "run.db", readonly=True)
    try:
        kills = [e for e in j.events() if e["kind"] == "kill" and e["job"] is None]
    finally:
        j.close()
    assert kills and "SIGKILLed the driver" in kills[-1]["message"], [dict(e) for e in kills]
    # Everything that ran under the driver went with it (Ray's own agents outlive a killed driver by minutes).
    assert [o.pid for o in tree if o.process() is not None] == []
    print(f"\nbin/kill --force returned, everything gone, after {took:.1f}s")
