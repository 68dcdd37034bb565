"""Whether a run's driver is alive, and sweeping what a run left behind.

Used by bin/kill and bin/resume when the driver is gone: every process the journal recorded is
checked (PID, create time, and the run marker in its environment) before it is signalled, so a
recycled PID or another run's process is never touched.
"""

from __future__ import annotations

import signal
import socket
from dataclasses import dataclass


from launcher import procs
from launcher.journal import Journal, ProcessRecord


@dataclass(frozen=True)
class DriverInfo:
    pid: int
    create_time: float
    host: str

    @classmethod
    def of(cls, journal: Journal) -> "DriverInfo":
        run = journal.run()
        return cls(run["driver_pid"], run["driver_create_time"], run["driver_host"])

    def alive(self) -> bool:
        if self.host != socket.gethostname():
            raise RuntimeError(f"the run's driver ran on {self.host}; run this command there")
        return procs.Owned(self.pid, self.create_time).process() is not None

    def signal(self, sig: int) -> bool:
        p = procs.Owned(self.pid, self.create_time).process()
        if p is None:
            return False
        p.send_signal(sig)
        return True


def leftovers(journal: Journal, run_id: str, job: str | None = None) -> list[ProcessRecord]:
    """Recorded processes of the run (or one job) that are still alive and verifiably ours."""
    return [r for r in journal.processes(job=job)
            if procs.Owned(r.pid, r.create_time).process(run_id) is not None]


def sweep(journal: Journal, run_id: str, job: str | None = None, grace: float = 10.0) -> list[int]:
    """TERM the recorded rank groups, then KILL whatever verified process remains. Returns PIDs hit."""
    alive = leftovers(journal, run_id, job)
    owned = [procs.Owned(r.pid, r.create_time) for r in alive]
    leaders = [procs.Owned(r.pid, r.create_time) for r in alive if r.role == "rank"]
    still = procs.terminate_tree(leaders, owned, run_id, grace)
    if still:
        procs.kill_verified(still, run_id, signal.SIGKILL)
    return [o.pid for o in owned]


