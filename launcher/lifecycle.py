"""Whether a run's driver is alive, and sweeping what a run left behind.

Used by bin/kill and bin/resume when the driver is gone: every process the journal recorded is
checked (PID, create time, and the run marker in its environment) before it is signalled, so a
recycled PID or another run's process is never touched.
"""

from __future__ import annotations

import signal
import socket
from dataclasses import dataclass
from pathlib import Path


from launcher import driver_lock, procs
from launcher.journal import Journal, ProcessRecord


class ElsewhereError(RuntimeError):
    """Only the driver's own host can signal it."""


@dataclass(frozen=True)
class DriverInfo:
    pid: int
    create_time: float
    host: str
    lock: Path | None = None   # the run's driver lock, on the shared run directory

    @classmethod
    def of(cls, journal: Journal, lock: Path | None = None) -> "DriverInfo":
        run = journal.run()
        return cls(run["driver_pid"], run["driver_create_time"], run["driver_host"], lock)

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """On its own host, by PID and start time. From another host its PID means nothing there:
        the driver lock it holds on the shared run directory says (the kernel, or NFS's lock
        manager, drops it when the driver dies, however it dies)."""
        if self.here:
            return procs.Owned(self.pid, self.create_time).process() is not None
        return self.lock is not None and not driver_lock.ours(self.lock) and driver_lock.is_held(self.lock)

    def signal(self, sig: int) -> bool:
        if not self.here:
            raise ElsewhereError(f"the driver (pid {self.pid}) runs on {self.host}: only a command there can signal it")
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


