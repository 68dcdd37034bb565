"""Starting and stopping rank processes safely.

Ranks start in their own session (so their process group can be killed whole) with the
parent-death signal set (so a rank does not outlive its agent). Nothing is ever killed by
name or by a bare PID: a process is signalled only after its create time matches the one
recorded at spawn and its environment carries this run's marker.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

RUN_MARKER = "SL_RUN_ID"
PR_SET_PDEATHSIG = 1
# Loaded once in the parent: the pre-exec hook must not import or allocate after fork().
_libc = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None


def _pdeathsig(expected_parent: int) -> None:
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != expected_parent:  # parent already gone before prctl took effect
        os._exit(1)


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROCFS = os.path.isdir("/proc/self")


def start_time(p: psutil.Process) -> float:
    """A process's start as seconds since boot, the identity we record and compare.

    psutil's create_time() adds the boot time read from /proc/stat, which moves whenever the wall
    clock is stepped (NTP, a VM restored from a snapshot): a live rank then looked like a
    recycled PID and was never killed. The kernel's start tick count never changes.
    """
    if not _PROCFS:   # macOS: the epoch time is all there is
        return p.create_time()
    try:
        with open(f"/proc/{p.pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):   # gone, or exiting while we read
        raise psutil.NoSuchProcess(p.pid) from None
    return int(fields[19]) / _CLK_TCK   # field 22 of stat, counted from the state field


@dataclass(frozen=True)
class Owned:
    """A process we started (or found under one), identified by PID *and* start time (see start_time)."""

    pid: int
    create_time: float

    def process(self, run_id: str | None = None) -> psutil.Process | None:
        """The live process, or None if it exited or the PID now belongs to someone else."""
        try:
            p = psutil.Process(self.pid)
            if abs(start_time(p) - self.create_time) > 0.01:
                return None  # recycled PID
            if run_id is not None and p.environ().get(RUN_MARKER) != run_id:
                return None
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None


def spawn(argv: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> tuple[subprocess.Popen, Owned]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab", buffering=0)
    parent = os.getpid()
    try:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=lambda: _pdeathsig(parent), close_fds=True)
    finally:
        log.close()
    try:
        ct = start_time(psutil.Process(proc.pid))
    except psutil.NoSuchProcess:
        ct = 0.0
    return proc, Owned(proc.pid, ct)


def descendants(root: Owned, run_id: str) -> list[Owned]:
    p = root.process(run_id)
    if p is None:
        return []
    try:
        kids = p.children(recursive=True)
    except psutil.NoSuchProcess:   # it exited while we looked: a poll at the moment a rank exits meets this
        return []
    out = []
    for c in kids:
        try:
            out.append(Owned(c.pid, start_time(c)))
        except psutil.NoSuchProcess:
            continue
    return out


def signal_group(leader: Owned, sig: int, run_id: str) -> bool:
    """Signal the process group led by `leader` if the leader is verifiably ours.

    A group id cannot be reused while any member lives, so once the leader is verified the
    group is ours; if the leader is gone, the caller sweeps recorded members one by one.
    """
    if leader.process(run_id) is None:
        return False
    try:
        os.killpg(leader.pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_verified(procs: list[Owned], run_id: str | None, sig: int = signal.SIGKILL) -> list[int]:
    """Signal each recorded process that still is the one we recorded; returns the PIDs signalled.

    run_id None: by PID and start time alone, for processes that carry no run marker (a driver's
    own Ray, seen under the verified driver)."""
    hit = []
    for o in procs:
        p = o.process(run_id)
        if p is None:
            continue
        try:
            p.send_signal(sig)
            hit.append(o.pid)
        except psutil.NoSuchProcess:
            continue
    return hit


def wait_gone(procs: list[Owned], run_id: str | None, timeout: float) -> list[Owned]:
    """Wait until none of `procs` is alive (or timeout); returns those still alive."""
    deadline = time.time() + timeout
    alive = [o for o in procs if o.process(run_id) is not None]
    while alive and time.time() < deadline:
        time.sleep(0.1)
        alive = [o for o in alive if o.process(run_id) is not None]
    return alive


def terminate_tree(leaders: list[Owned], known: list[Owned], run_id: str, grace: float) -> list[Owned]:
    """TERM the groups, wait `grace`, KILL the groups, then KILL every verified straggler.

    Returns processes still alive afterwards (should be none).
    """
    tracked = list({o.pid: o for o in [*leaders, *known, *[d for lead in leaders for d in descendants(lead, run_id)]]}.values())
    for lead in leaders:
        signal_group(lead, signal.SIGTERM, run_id)
    # Descendants that left the group (own session) or outlived their leader get TERM too.
    kill_verified(tracked, run_id, signal.SIGTERM)
    alive = wait_gone(tracked, run_id, grace)
    if alive:
        for lead in leaders:
            signal_group(lead, signal.SIGKILL, run_id)
        kill_verified(alive, run_id, signal.SIGKILL)
        alive = wait_gone(alive, run_id, 10.0)
    return alive
