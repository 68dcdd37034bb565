"""One driver per run: an exclusive flock on runs/<run>/driver.lock, held for the driver's life.

The kernel drops the lock when the driver dies, however it dies, so a lock can never go stale, and
a second `bin/resume` (or a reused `--run-id`) that races the first one is refused at once instead
of sharing attempt numbers, heartbeats and checkpoints with it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

_held: dict[Path, IO[str]] = {}   # kept open until the process exits: closing the file would drop the lock


class RunLocked(RuntimeError):
    """Another live process drives this run."""


def acquire(path: Path) -> None:
    """Take the run's driver lock for the rest of this process, or raise RunLocked."""
    path = path.resolve()
    if path in _held:
        return
    f = open(path, "a+")   # opened close-on-exec: ranks and Ray workers never inherit it
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read()
        f.close()
        raise RunLocked(f"another driver holds {path} ({holder.strip() or 'pid unknown'})") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    _held[path] = f


def is_held(path: Path) -> bool:
    """Whether some live process holds the lock (a probe that takes and drops it)."""
    if path.resolve() in _held:
        return True
    try:
        f = open(path, "a+")
    except FileNotFoundError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def ours(path: Path) -> bool:
    """Whether this process holds the lock (bin/resume, about to drive the run itself)."""
    return path.resolve() in _held


def release(path: Path) -> None:
    f = _held.pop(path.resolve(), None)
    if f is not None:
        f.close()
