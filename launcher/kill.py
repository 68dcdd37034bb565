"""bin/kill: asking the driver to stop a run or a job, and what to do when it does not answer.

A live driver acts on a request file (launcher.control.requests) and records the kill itself. A wedged
driver (SIGSTOPped, stuck in a syscall, deadlocked) never reads it. `bin/kill --force RUN` then
SIGKILLs the driver (verified by PID and start time, never a bare PID) and every process under it
(its Ray, the node agents, the ranks), waits until it is gone and the kernel has dropped its
driver lock, and does what bin/kill does when there is no driver: sweep every recorded, verified
process of the run (those that left the tree: a rank's child whose rank already died) and put the
kill in the journal. A forced kill of one job never kills the driver: that would stop every other
job of the run too.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any, Literal

import psutil

from launcher import driver_lock, procs, status
from launcher.control import requests as control
from launcher.journal import Journal
from launcher.layout import RunDir
from launcher.lifecycle import DriverInfo, sweep

# How long `--force` waits for the driver to read its request before treating it as wedged.
FORCE_PATIENCE_S = 10.0
DRIVER_EXIT_S = 30.0     # after the SIGKILL: until the driver is gone and its lock free
ENDED = ("succeeded", "failed", "skipped", "killed")

Step = Literal["wait", "done", "driver_gone", "kill_driver", "give_up"]


def confirmed(st: dict[str, Any], job: str | None) -> bool:
    """Whether the driver has done what was asked (status.collect's dict): the job, or every job
    and the run itself, ended."""
    states = [j["state"] for j in st["jobs"] if job is None or j["name"] == job]
    return all(s in ENDED for s in states) and (job is not None or st["state"] not in ("running", "pending"))


def next_step(*, done: bool, alive: bool, taken: bool, waited: float, timeout: float, force: bool,
              job: str | None) -> Step:
    """What bin/kill does next while it waits for the driver.

    taken: the driver has read the request (it deletes the file first): it is working, not wedged,
    and gets the whole `timeout`. One that has not read it gets FORCE_PATIENCE_S under `--force`.
    Only a forced kill of the whole run kills the driver itself.
    """
    if done:
        return "done"
    if not alive:
        return "driver_gone"
    limit = min(FORCE_PATIENCE_S, timeout) if force and not taken else timeout
    if waited < limit:
        return "wait"
    return "kill_driver" if force and job is None else "give_up"


def unanswered(run: str, job: str | None, force: bool, taken: bool, waited: float, pid: int) -> str:
    """What bin/kill says when it gives up on (or is about to kill) a driver that did not confirm."""
    what = f"job {job}" if job else "the run"
    if taken:
        head = f"the driver (pid {pid}) took the request to kill {what} but did not confirm within {waited:.0f}s"
    else:
        head = (f"the driver (pid {pid}) is not responding: it has not read the request to kill {what} "
                f"in {waited:.0f}s (stopped, stuck in a system call or deadlocked)")
    if force and job is None:
        return head
    whole = f"bin/kill --force {run}"
    if force:   # one job: killing the driver would stop the whole run, so that is the user's call
        return (f"{head}\n  a forced kill of one job does not kill the driver; `{whole}` (no job) SIGKILLs the "
                "driver and every process of the run (bin/resume continues it later)")
    if taken:
        return f"{head}\n  run bin/kill again with --force: `bin/kill {run}{' ' + job if job else ''} --force`"
    return (f"{head}\n  `{whole}` SIGKILLs the driver and every process of the run (bin/resume continues it "
            "later); the request stays, should the driver recover")


def await_driver(rd: RunDir, driver: DriverInfo, request: Path, job: str | None, force: bool, timeout: float,
                 poll_s: float = 0.5) -> tuple[Step, bool, float]:
    """Wait for the driver to act on `request`: (the step that ended the wait, taken, seconds waited)."""
    t0 = time.time()
    while True:
        waited = time.time() - t0
        taken = not request.exists()
        step = next_step(done=confirmed(status.collect(rd), job), alive=driver.alive(), taken=taken,
                         waited=waited, timeout=timeout, force=force, job=job)
        if step == "done" and job is None:
            # The run is killed on record; the driver still closes Ray and the journal. Return once
            # it is gone, so a `bin/resume` right after is not refused for a live driver.
            deadline = time.time() + DRIVER_EXIT_S
            while (driver.alive() or driver_lock.is_held(rd.driver_lock)) and time.time() < deadline:
                time.sleep(0.2)
        if step != "wait":
            return step, taken, waited
        time.sleep(poll_s)


def driver_tree(driver: DriverInfo) -> list[procs.Owned]:
    """Every process under the driver, if it still is the recorded one: its Ray (GCS, raylet, the
    node agents' workers), the ranks and their children. Taken before the driver is killed: once it
    is gone they are orphans, and Ray's own agents linger for minutes."""
    p = procs.Owned(driver.pid, driver.create_time).process()
    if p is None:
        return []
    out = []
    for c in p.children(recursive=True):
        try:
            out.append(procs.Owned(c.pid, procs.start_time(c)))
        except psutil.NoSuchProcess:
            continue
    return out


def kill_driver(driver: DriverInfo, lock: Path, timeout: float = DRIVER_EXIT_S) -> list[int] | None:
    """SIGKILL the driver if it still is the recorded process (PID and start time), then what ran
    under it (each still the process seen there: PID and start time). Returns the PIDs killed
    under it once the driver is gone and nobody holds the run's driver lock any more (the kernel
    drops it with the driver); None if that did not happen within `timeout`."""
    tree = driver_tree(driver)
    driver.signal(signal.SIGKILL)
    hit = procs.kill_verified(tree, None, signal.SIGKILL)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not driver.alive() and not driver_lock.is_held(lock):
            procs.wait_gone(tree, None, max(0.0, deadline - time.time()))
            return hit
        time.sleep(0.1)
    return None


def kill_without_driver(rd: RunDir, job: str | None, grace: float, reason: str, message: str,
                        end_attempts: bool = False, **data: Any) -> list[int]:
    """With no driver, bin/kill is the journal's only writer: sweep the run's (or the job's) recorded
    processes, mark its pending and running jobs killed (and the run, for a whole-run kill), record
    an event ("<message>: swept N process(es)"). end_attempts: also end the open attempts as
    killed (bin/kill killed them; after a driver's death bin/resume calls them lost). Returns the
    PIDs swept."""
    journal = Journal(rd.db)
    try:
        hit = sweep(journal, rd.root.name, job, grace=grace)
        for row in journal.jobs():
            if (job is None or row["name"] == job) and row["state"] in ("pending", "running"):
                if end_attempts:
                    for a in journal.attempts(row["name"]):
                        if a["ended"] is None:
                            journal.end_attempt(row["name"], a["n"], "killed", "killed", {}, row["step"], detail=reason)
                journal.set_job(row["name"], state="killed", reason=reason)
        if job is None:
            journal.set_run(state="killed", ended=time.time())
        journal.event("kill", f"{message}: swept {len(hit)} process(es)", job=job, pids=hit, **data)
        return hit
    finally:
        journal.close()


def force_kill_run(rd: RunDir, driver: DriverInfo, taken: bool, waited: float) -> int:
    """`bin/kill --force RUN` after the driver did not answer: kill it, then sweep and record."""
    print(unanswered(rd.root.name, None, True, taken, waited, driver.pid), flush=True)
    if not driver.here:   # its PID means nothing on this host: only its own host can verify and kill it
        print(f"the driver runs on {driver.host}: run `bin/kill --force {rd.root.name}` there", file=sys.stderr)
        return 1
    under = kill_driver(driver, rd.driver_lock)
    if under is None:
        print(f"the driver (pid {driver.pid}) or whoever holds {rd.driver_lock} is still there {DRIVER_EXIT_S:.0f}s "
              "after SIGKILL; nothing swept", file=sys.stderr)
        return 1
    dropped = control.withdraw(rd.root)   # nobody acts on them now, and a resumed driver must not
    hit = kill_without_driver(
        rd, None, 0.0, "killed by bin/kill --force (the driver was not responding)",
        f"bin/kill --force SIGKILLed the driver (pid {driver.pid}), which had not answered in {waited:.0f}s, "
        f"and {len(under)} process(es) under it", end_attempts=True, driver_pid=driver.pid, under_driver=under,
        withdrawn=[p.name for p in dropped])
    print(f"SIGKILLed the driver (pid {driver.pid}) and {len(under)} process(es) under it; "
          f"swept {len(hit)} more recorded process(es); run {rd.root.name} marked killed", flush=True)
    return 0
