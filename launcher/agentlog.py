"""A node agent's own log: its stdout, stderr, `launcher.*` logging and fatal-error tracebacks,
written into the run directory (jobs/<job>/logs/attempt-<n>/agent-node<k>.log).

Without it they stay in Ray's temp directory on each node (worker-*.out/err), where nobody
looks and which a reboot wipes. The streams are teed, not moved: Ray still forwards the
actor's output to the driver as before.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from launcher.layout import JobDir

AGENT_LOG_GLOB = "agent-node*.log"


def agent_log(jd: JobDir, attempt: int, node_rank: int) -> Path:
    """One file per agent: the job's node rank, not Ray's 56-hex node id (readable, stable)."""
    return jd.attempt_logs(attempt) / f"agent-node{node_rank}.log"


class Tee:
    """A text stream that writes to several: the original stream and the agent's file.
    A stream that fails (closed, disk full) is skipped, so logging can never fail the agent."""

    def __init__(self, *streams: IO[str]):
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            try:
                st.write(s)
                st.flush()
            except (OSError, ValueError):
                pass
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            try:
                st.flush()
            except (OSError, ValueError):
                pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:   # what subprocess/faulthandler callers ask of sys.stderr: the original's
        return self.streams[0].fileno()

    def __getattr__(self, name: str) -> Any:   # encoding, errors, ... of the original stream
        return getattr(self.streams[0], name)


@dataclass
class AgentLog:
    path: Path
    file: IO[str]
    handler: logging.Handler
    faulthandler_was_on: bool


def open_agent_log(path: Path, header: str) -> AgentLog:
    """Tee this process's sys.stdout/sys.stderr into `path`, send `launcher.*` logging (INFO and
    up: the monitor's errors) there too, and let faulthandler dump every thread's stack into it on
    a fatal signal. Call once, in the actor's process (it changes process-wide state)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a", buffering=1, errors="replace")   # line-buffered: tail -f sees lines as they come
    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {header} (host {socket.gethostname()}, pid {os.getpid()})\n")
    sys.stdout = Tee(sys.__stdout__ if sys.stdout is None else sys.stdout, f)   # type: ignore[assignment]
    sys.stderr = Tee(sys.__stderr__ if sys.stderr is None else sys.stderr, f)   # type: ignore[assignment]
    handler = logging.StreamHandler(sys.stderr)   # the tee: the file and, as before, Ray's forwarding
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    lg = logging.getLogger("launcher")
    lg.addHandler(handler)
    if lg.level == logging.NOTSET or lg.level > logging.INFO:
        lg.setLevel(logging.INFO)
    was_on = faulthandler.is_enabled()
    faulthandler.enable(file=f, all_threads=True)
    return AgentLog(path, f, handler, was_on)


def close_agent_log(log: AgentLog) -> None:
    """Undo open_agent_log (tests; a real agent's log lives as long as its process)."""
    logging.getLogger("launcher").removeHandler(log.handler)
    for name in ("stdout", "stderr"):
        st = getattr(sys, name)
        if isinstance(st, Tee) and log.file in st.streams:
            setattr(sys, name, st.streams[0])
    # Never leave faulthandler on the closed file's descriptor (a later file may reuse the number).
    if log.faulthandler_was_on:
        faulthandler.enable(file=sys.__stderr__, all_threads=True)
    else:
        faulthandler.disable()
    log.file.close()
