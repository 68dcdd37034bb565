"""What a node host sends back to the executor (launcher/node/executor.py), as typed objects (pickled by Ray as they are).

Nothing crosses the actor boundary as a dict read by string keys: the executor, the release thread
and the supervisor's watch read these fields, and a renamed field fails at once, everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from launcher.heartbeat import Heartbeat
from launcher.release import Release


@dataclass(frozen=True)
class BundleInfo:
    """Where a placement-group bundle is and which GPUs Ray reserved in it (a task inside it said)."""
    node: str
    ip: str
    host: str
    gpus: tuple[str, ...]


@dataclass(frozen=True)
class SpawnedRank:
    rank: int
    pid: int
    create_time: float      # seconds since boot (procs.start_time): with the pid, the process's identity
    pgid: int
    node: str


@dataclass(frozen=True)
class Started:
    bundle: BundleInfo
    ranks: list[SpawnedRank]


@dataclass
class RankStatus:
    rank: int
    pid: int
    create_time: float
    exit_code: int | None
    heartbeat: Heartbeat | None        # this attempt's newest beat; None before the first
    log_tail: list[str] = field(default_factory=list)
    oom_killed: str | None = None      # the kernel's OOM killer ended it (see launcher.oomkill)
    exited_at: float | None = None     # when the host first saw it gone (wait_exit looks every 20 ms)


@dataclass(frozen=True)
class NewChild:
    """A process a rank started, seen for the first time: recorded so a sweep can find it."""
    pid: int
    create_time: float
    rank: int


@dataclass
class AgentReport:
    node: str
    ranks: list[RankStatus]
    new_children: list[NewChild]
    time: float = field(default_factory=time.time)   # when the host looked: the watch judges at this time
    job_mib: dict[str, float | None] = field(default_factory=dict)   # GPU -> the job's MiB, the monitor's last sample


@dataclass(frozen=True)
class Stopped:
    exit_codes: dict[int, int | None]
    still_alive: list[int]
    release: Release | None            # None: no probe (the group never started its ranks)
    gpus: list[str]


@dataclass(frozen=True)
class Unreleased:
    """GPUs whose memory did not come back after the job's processes were gone."""
    bundle: int
    gpus: list[str]
    waited_s: float
    still_held: dict[str, float | None]
    job_pids_on_gpu: list[int]


@dataclass
class Released:
    exit_codes: dict[int, int | None] = field(default_factory=dict)
    still_alive: list[int] = field(default_factory=list)
    unreleased: list[Unreleased] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)       # for the journal's events, in order
    checkpoint_problem: str | None = None                # what `verify` found wrong with the checkpoint asked about


@dataclass(frozen=True)
class SweepTarget:
    """What the journal recorded on one node, for when its agent cannot answer."""
    node: str
    records: list[tuple[int, float, bool]]   # (pid, create_time, is_rank_leader)
