"""`bin/cluster up|join --foreground`: this host's Ray as a child that lives exactly as long as the
command, so a Slurm step (`srun bin/cluster up --foreground`) holds the daemons and ending the step
ends them. SIGTERM, SIGINT and SIGHUP (the step's end, scancel, srun passing a signal on) stop Ray
as `down` does; when Ray stops by itself, whatever is left of it is swept the same way."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from launcher import procs
from launcher.clusterctl import daemons
from launcher.clusterctl.nodespec import NodeSpec
from launcher.clusterctl.state import NodeRecord, clear

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class StopRequest:
    """The first stop signal. The handler only records it: stopping runs in the main loop, never
    inside a handler that may have interrupted a write of the node record."""
    signum: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum

    def received(self) -> bool:
        return self.signum is not None


@dataclass(frozen=True)
class Outcome:
    signum: int | None            # the signal that stopped it; None: Ray stopped by itself
    ray_exit: int | None          # `ray start`'s exit status when it ended by itself
    left: list[procs.Owned] = field(default_factory=list)   # still alive after the stop (should be none)

    @property
    def code(self) -> int:
        """0 for a clean stop on request; else Ray's own status (a daemon died), 1 if processes were left."""
        if self.left:
            return 1
        if self.signum is not None:
            return 0
        rc = self.ray_exit if self.ray_exit is not None else 1
        return rc if rc >= 0 else 128 - rc


def run(spec: NodeSpec, token: Path, host_dir: Path, ray_bin: str, timeout: float,
        ready: Callable[[NodeRecord], None], poll_s: float = 0.5) -> Outcome:
    """Start Ray as a child, call `ready` once it runs, and return when it has stopped (asked to by a
    signal, or by itself), nothing of it left and its record gone. StartFailed as daemons.launch."""
    stop = StopRequest()
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}   # before the start: a signal then stops it too
    try:
        record, proc = daemons.launch(spec, token, host_dir, ray_bin, timeout, detach=False, cancelled=stop.received)
        try:
            ready(record)
            while proc.poll() is None and not stop.received():
                time.sleep(poll_s)
        finally:   # also when `ready` failed: nothing of this Ray may outlive the command
            left = daemons.stop(record)
            proc.poll()   # reap `ray start`: the step must not keep a zombie
            clear(host_dir)
        return Outcome(stop.signum, None if stop.received() else proc.returncode, left)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
