"""Starting this host's Ray daemons and stopping exactly those (never `ray stop`: it kills every
Ray process on the machine by name, other users' and other runs' included)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable

import psutil

from launcher import procs
from launcher.clusterctl.auth import auth_env
from launcher.clusterctl.nodespec import NodeSpec, ray_start_argv
from launcher.clusterctl.state import MARKER_ENV, NodeRecord

READY_TEXT = "Ray runtime started"
DRAIN_ENV = "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"


class StartFailed(RuntimeError):
    pass


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def launch(spec: NodeSpec, token: Path, host_dir: Path, ray_bin: str, timeout: float = 180.0, detach: bool = True,
           cancelled: Callable[[], bool] = lambda: False) -> tuple[NodeRecord, subprocess.Popen]:
    """`ray start --block`, marked; returns once Ray says it runs (or raises with its log).

    detach: in its own session, so it outlives this command (`up`, `join`). Otherwise it stays in
    this process group: a Slurm step's process tracking (pgid, linuxproc, cgroup) then covers the
    daemons, and the step ends them even if this process is SIGKILLed. `cancelled` is polled while
    Ray starts (a signal during start-up): the daemons are stopped and StartFailed raised."""
    host_dir.mkdir(parents=True, exist_ok=True)
    log = host_dir / "ray-start.log"
    marker = uuid.uuid4().hex
    env = {**os.environ, **auth_env(token), MARKER_ENV: marker, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)   # a stale address in the caller's shell must not redirect a head
    # Ray 2.60's `ray start --block` answers SIGTERM by draining the node for up to 30 s (for Serve)
    # before it stops anything: `down`, and a Slurm step's end (whose KillWait is often 30 s), then
    # wait that long for nothing. Runs stop their jobs themselves; the caller may still ask for it.
    env.setdefault(DRAIN_ENV, "0")
    with open(log, "ab") as out:
        proc = subprocess.Popen(ray_start_argv(spec, ray_bin), env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=detach, close_fds=True)
    me = procs.Owned(proc.pid, procs.start_time(psutil.Process(proc.pid)))
    address = spec.head_address or f"{spec.node_ip}:{spec.port}"
    record = NodeRecord(spec.role, spec.node_ip, address, marker, me.pid, me.create_time, str(token),
                        str(spec.temp_dir), str(log))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise StartFailed(f"ray start exited with {proc.returncode}; its log {log} ends:\n{_log_tail(log)}")
        if READY_TEXT in log.read_text(errors="replace"):
            return record, proc
        if cancelled():
            stop(record, grace=10)
            raise StartFailed(f"stopped by a signal before Ray was up (log {log})")
        time.sleep(0.5)
    stop(record, grace=10)
    raise StartFailed(f"Ray did not start within {timeout:.0f} s; its log {log} ends:\n{_log_tail(log)}")


def start(spec: NodeSpec, token: Path, host_dir: Path, ray_bin: str, timeout: float = 180.0) -> NodeRecord:
    """`ray start --block` in its own session, left running when this command returns."""
    return launch(spec, token, host_dir, ray_bin, timeout)[0]


def marked(marker: str) -> list[procs.Owned]:
    """Every live process carrying this host's marker (the daemons and the workers they spawned)."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARKER_ENV) == marker:
                out.append(procs.Owned(p.pid, procs.start_time(p)))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def _ours(o: procs.Owned, marker: str) -> psutil.Process | None:
    p = o.process()
    try:
        return p if p is not None and p.environ().get(MARKER_ENV) == marker else None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _signal_all(found: list[procs.Owned], marker: str, sig: int) -> None:
    for o in found:
        p = _ours(o, marker)
        if p is not None:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass


def stop(record: NodeRecord, grace: float = 15.0) -> list[procs.Owned]:
    """TERM `ray start` (it takes its daemons down), then TERM and finally KILL whatever still carries
    the marker; returns what is left alive (should be nothing)."""
    leader = procs.Owned(record.pid, record.start_time)
    if _ours(leader, record.marker) is not None:
        _signal_all([leader], record.marker, signal.SIGTERM)
        procs.wait_gone([leader], None, grace)
    found = marked(record.marker)
    _signal_all(found, record.marker, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(_ours(o, record.marker) for o in found):
        time.sleep(0.2)
    _signal_all(marked(record.marker), record.marker, signal.SIGKILL)
    time.sleep(0.5)
    return [o for o in marked(record.marker)]
