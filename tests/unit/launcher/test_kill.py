"""bin/kill when the driver does not answer (issue 11): the decisions (wait, kill the driver, give up
with a message), and the CLI against a stand-in driver that holds the run's lock and never reads
its requests, as a wedged one does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from launcher import driver_lock, kill, procs
from launcher.control import requests as control
from launcher.journal import Journal, ProcessRecord
from launcher.layout import RunDir
from launcher.lifecycle import DriverInfo

REPO = Path(__file__).resolve().parents[3]


def _st(run_state: str, **jobs: str) -> dict[str, Any]:
    return {"state": run_state, "jobs": [{"name": n, "state": s} for n, s in jobs.items()]}


def test_confirmed_needs_the_job_ended_or_every_job_and_the_run():
    assert kill.confirmed(_st("running", a="killed", b="running"), "a")
    assert not kill.confirmed(_st("running", a="running", b="killed"), "a")
    assert not kill.confirmed(_st("running", a="killed", b="skipped"), None)   # the run not yet ended
    assert not kill.confirmed(_st("killed", a="killed", b="running"), None)
    assert kill.confirmed(_st("killed", a="killed", b="succeeded"), None)


def _next(waited: float, *, force: bool, job: str | None = None, taken: bool = False, timeout: float = 120.0,
          done: bool = False, alive: bool = True) -> str:
    return kill.next_step(done=done, alive=alive, taken=taken, waited=waited, timeout=timeout, force=force, job=job)


def test_force_kills_a_driver_that_has_not_read_the_request_after_the_short_wait():
    assert _next(9.9, force=True) == "wait"
    assert _next(kill.FORCE_PATIENCE_S, force=True) == "kill_driver"
    assert _next(2.0, force=True, timeout=2.0) == "kill_driver"   # --timeout below the wait wins
    assert _next(1.9, force=True, timeout=2.0) == "wait"


def test_a_driver_that_took_the_request_gets_the_whole_timeout():
    assert _next(60.0, force=True, taken=True) == "wait"
    assert _next(120.0, force=True, taken=True) == "kill_driver"
    assert _next(119.0, force=False, taken=True) == "wait"
    assert _next(120.0, force=False, taken=True) == "give_up"


def test_one_job_or_no_force_never_kills_the_driver():
    assert _next(kill.FORCE_PATIENCE_S, force=True, job="train") == "give_up"
    assert _next(500.0, force=True, job="train", taken=True) == "give_up"
    assert _next(kill.FORCE_PATIENCE_S, force=False) == "wait"    # without --force: the whole --timeout
    assert _next(120.0, force=False) == "give_up"
    assert _next(120.0, force=False, job="train") == "give_up"


def test_done_and_a_dead_driver_end_the_wait_at_once():
    assert _next(0.0, force=True, done=True, alive=False) == "done"
    assert _next(0.0, force=False, alive=False) == "driver_gone"
    assert _next(0.0, force=True, job="train", alive=False) == "driver_gone"


def test_messages_say_the_driver_is_not_responding_and_what_to_run():
    one_job = kill.unanswered("r1", "train", True, False, 10.0, 4242)
    assert "driver (pid 4242) is not responding" in one_job and "kill job train in 10s" in one_job
    assert "does not kill the driver" in one_job and "`bin/kill --force r1` (no job)" in one_job
    no_force = kill.unanswered("r1", None, False, False, 120.0, 4242)
    assert "not responding" in no_force and "`bin/kill --force r1` SIGKILLs the driver" in no_force
    busy = kill.unanswered("r1", "train", False, True, 120.0, 4242)
    assert "took the request to kill job train but did not confirm within 120s" in busy
    assert "bin/kill r1 train --force" in busy
    assert kill.unanswered("r1", None, True, False, 10.0, 4242).count("\n") == 0   # before it is killed: no advice


def test_withdraw_removes_every_unread_request(tmp_path):
    control.request_kill(tmp_path, None, False)
    control.request_kill(tmp_path, "train", True)
    assert len(control.withdraw(tmp_path)) == 2
    assert control.pending(tmp_path) == [] and control.withdraw(tmp_path) == []


# A stand-in for a wedged driver: it holds the run's lock and has a child (as a driver has its Ray),
# and never reads a request.
WEDGED = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    from launcher import driver_lock
    driver_lock.acquire(Path(sys.argv[1]))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(child.pid, flush=True)
    time.sleep(120)
""")


@pytest.fixture
def wedged_run(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A run whose journal names a wedged driver, with job `train` running (attempt 1, one rank: a
    process of this run in its own session, outside the driver's tree) and `after` pending."""
    run_id = f"wedged-{uuid.uuid4().hex[:8]}"
    rd = RunDir(tmp_path / "runs" / run_id)
    rd.root.mkdir(parents=True)
    drv = subprocess.Popen([sys.executable, "-c", WEDGED, str(rd.driver_lock)], cwd=REPO, stdout=subprocess.PIPE,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    child_pid = int(drv.stdout.readline())
    child = procs.Owned(child_pid, procs.start_time(psutil.Process(child_pid)))
    driver = DriverInfo(drv.pid, procs.start_time(psutil.Process(drv.pid)), socket.gethostname())
    rank_proc, rank = procs.spawn([sys.executable, "-c", "import time; time.sleep(120)"],
                                  {**os.environ, procs.RUN_MARKER: run_id}, tmp_path / "rank-0.log", tmp_path)
    j = Journal(rd.db)
    j.create_run(run_id, "plan.yaml", {"argv": []}, driver.pid, driver.create_time, driver.host)
    j.set_run(state="running")
    j.add_job("train", "train", "synthetic", [], 1, 0)
    j.add_job("after", "after", "synthetic", ["train"], 1, 1)
    j.start_attempt("train", 1, [], None, 0)
    j.set_job("train", step=7)
    j.add_processes([ProcessRecord("train", 1, 0, "node", rank.pid, rank.create_time, rank.pid)])
    j.close()
    yield {"rd": rd, "driver": driver, "drv": drv, "child": child, "rank": rank, "rank_proc": rank_proc}
    for o in (procs.Owned(driver.pid, driver.create_time), child, rank):
        procs.kill_verified([o], None, signal.SIGKILL)
    drv.wait(10)
    rank_proc.wait(10)


def _kill(rd: RunDir, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher", "kill", rd.root.name, *args, "--runs-dir",
                           str(rd.root.parent)], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_force_of_one_job_leaves_a_wedged_driver_and_says_how_to_kill_the_run(wedged_run):
    rd, driver = wedged_run["rd"], wedged_run["driver"]
    out = _kill(rd, "train", "--force", "--timeout", "1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"the driver (pid {driver.pid}) is not responding" in out.stderr
    assert f"`bin/kill --force {rd.root.name}` (no job)" in out.stderr
    assert driver.alive() and wedged_run["rank"].process() is not None
    assert len(control.pending(rd.root)) == 1   # the request stays, should the driver recover


def test_without_force_a_wedged_driver_is_named_and_force_suggested(wedged_run):
    rd, driver = wedged_run["rd"], wedged_run["driver"]
    out = _kill(rd, "--timeout", "1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "is not responding" in out.stderr and f"`bin/kill --force {rd.root.name}`" in out.stderr
    assert driver.alive()


def test_force_kills_a_wedged_driver_its_tree_and_the_recorded_ranks(wedged_run):
    rd, driver, child, rank = wedged_run["rd"], wedged_run["driver"], wedged_run["child"], wedged_run["rank"]
    control.request_kill(rd.root, "after", False)   # an older request the driver never read
    out = _kill(rd, "--force", "--timeout", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SIGKILLed the driver (pid {driver.pid}) and 1 process(es) under it; swept 1 more" in out.stdout
    assert not driver.alive() and child.process() is None and rank.process() is None
    assert not driver_lock.is_held(rd.driver_lock)
    assert control.pending(rd.root) == []
    j = Journal(rd.db, readonly=True)
    try:
        assert j.run()["state"] == "killed" and j.run()["ended"] is not None
        assert {r["name"]: r["state"] for r in j.jobs()} == {"train": "killed", "after": "killed"}
        (a,) = j.attempts("train")
        assert (a["state"], a["failure"], a["end_step"]) == ("killed", "killed", 7) and a["ended"] is not None
        (ev,) = [e for e in j.events() if e["kind"] == "kill"]
        assert f"SIGKILLed the driver (pid {driver.pid})" in ev["message"] and "swept 1 process(es)" in ev["message"]
    finally:
        j.close()


def test_kill_driver_never_signals_a_pid_whose_start_time_differs(wedged_run):
    real = wedged_run["driver"]
    impostor = DriverInfo(real.pid, real.create_time + 5.0, real.host)   # the PID, recycled by another process
    assert kill.kill_driver(impostor, wedged_run["rd"].driver_lock, timeout=0.5) is None
    assert real.alive() and wedged_run["child"].process() is not None
