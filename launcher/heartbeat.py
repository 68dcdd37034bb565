"""Heartbeats: each rank rewrites one small JSON file atomically; its agent reads it.

A file per rank (not a socket) so that a rank stuck in a collective still leaves its last
known step and phase behind, and the agent can tell "slow" from "stopped".
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from launcher.atomic import read_json, write_json

Phase = Literal["loading", "training", "evaluating", "saving", "done"]


@dataclass
class Heartbeat:
    rank: int
    step: int
    total_steps: int
    phase: Phase
    time: float = field(default_factory=time.time)
    pid: int = 0
    loss: float | None = None
    torch_max_allocated_mib: float | None = None
    torch_max_reserved_mib: float | None = None
    attempt: int = 1
    progress: int = 0   # work units done in this phase (evaluation batches): progress the supervisor sees
    rss_hwm_mib: float | None = None   # the rank's own peak resident memory so far (VmHWM)
    # command jobs: seconds since each activity signal last moved (output, files, cpu, ...): what a
    # hang verdict on a script that writes no heartbeat of its own rests on
    signals: dict[str, float] | None = None
    # False: this rank's step is a stand-in (a script's rank that prints no progress of its own,
    # as the Trainer's ranks other than 0 do); it must not hold the job's step down
    counts_steps: bool = True


def own_peak_rss_mib() -> float | None:
    """This process's peak resident memory since its exec (VmHWM): the host monitor's floor for a
    rank that lived between two of its samples. getrusage's ru_maxrss would not do: it keeps the
    forking parent's size from before the exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)   # kB
    except OSError:
        pass
    return None


def write(path: Path, hb: Heartbeat) -> None:
    write_json(path, asdict(hb))


def read(path: Path) -> Heartbeat | None:
    """None for no heartbeat yet, and for one that is not ours to read (not JSON, not a heartbeat:
    writes are atomic, so that is someone else's file): the rank simply has not beaten."""
    try:
        data = read_json(path)
        return Heartbeat(**data) if isinstance(data, dict) and data else None
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
