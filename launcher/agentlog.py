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
    """A text stream that writes to several: the original stream and the files of the rank groups
    the node's host holds now (one host serves every job on its node; each group's file is added
    when it opens and taken out when it closes). A stream that fails (closed, disk full) is skipped,
    so logging can never fail the host."""

    def __init__(self, *streams: IO[str]):
        self.streams = list(streams)

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


_handler: logging.Handler | None = None   # one per process: every group's file gets each line once
_faulthandler_was_on = False              # before the first file was opened


def _files() -> list[IO[str]]:
    st = sys.stderr
    return list(st.streams[1:]) if isinstance(st, Tee) else []


def open_agent_log(path: Path, header: str) -> AgentLog:
    """Tee this process's sys.stdout/sys.stderr into `path` too, send `launcher.*` logging (INFO
    and up: the monitor's errors) there, and let faulthandler dump every thread's stack into the
    newest such file on a fatal signal. Process-wide: a host holding several groups writes its
    output into each group's file while that group is open."""
    global _handler, _faulthandler_was_on
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a", buffering=1, errors="replace")   # line-buffered: tail -f sees lines as they come
    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {header} (host {socket.gethostname()}, pid {os.getpid()})\n")
    if not _files():
        _faulthandler_was_on = faulthandler.is_enabled()
    for name, original in (("stdout", sys.__stdout__), ("stderr", sys.__stderr__)):
        st = getattr(sys, name)
        if isinstance(st, Tee):
            st.streams.append(f)
        else:
            setattr(sys, name, Tee(original if st is None else st, f))
    if _handler is None:
        _handler = logging.StreamHandler(sys.stderr)   # the tee: the files and, as before, Ray's forwarding
        _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logging.getLogger("launcher").addHandler(_handler)
    lg = logging.getLogger("launcher")
    if lg.level == logging.NOTSET or lg.level > logging.INFO:
        lg.setLevel(logging.INFO)
    faulthandler.enable(file=f, all_threads=True)
    return AgentLog(path, f, _handler, _faulthandler_was_on)


def close_agent_log(log: AgentLog) -> None:
    """Take `log`'s file out of the tee; the last one out restores the streams, logging and faulthandler."""
    global _handler
    for name in ("stdout", "stderr"):
        st = getattr(sys, name)
        if isinstance(st, Tee) and log.file in st.streams:
            st.streams.remove(log.file)
            if len(st.streams) == 1:
                setattr(sys, name, st.streams[0])
    # Never leave faulthandler on the closed file's descriptor (a later file may reuse the number).
    rest = _files()
    if rest:
        faulthandler.enable(file=rest[-1], all_threads=True)
    else:
        if _handler is not None:
            logging.getLogger("launcher").removeHandler(_handler)
            _handler = None
        if _faulthandler_was_on:
            faulthandler.enable(file=sys.__stderr__, all_threads=True)
        else:
            faulthandler.disable()
    log.file.close()
