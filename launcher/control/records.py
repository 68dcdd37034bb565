"""What the driver keeps per job and per attempt while a run goes on (the records, not the loop).

`JobRun.state` lives in the scheduling core (launcher/control/core.py): every change goes through
its transition table.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ray.util.placement_group import PlacementGroup

from launcher import teardown
from launcher.control.core import Core
from launcher.control.states import JobState
from launcher.node.host import GroupHandle
from launcher.plan import Job
from launcher.supervision.watch import AttemptWatch


@dataclass
class Attempt:
    n: int
    pg: PlacementGroup
    held: list[dict[str, Any]] = field(default_factory=list)   # GPUs in our books: reserved, then placed
    ready_ref: Any = None             # pg.ready() once: each call schedules a new task in the group
    info_refs: list[Any] = field(default_factory=list)   # bundle_info per bundle: its node and GPU ids
    info_sent: float = 0.0
    bundle_key: tuple[Any, ...] = ()   # what the placement group's bundles are: which spare one fits
    reused: bool = False               # the placement group came from a job that just ended
    keep_pg: bool = False
    start_refs: list[Any] = field(default_factory=list)
    agents: list[GroupHandle] = field(default_factory=list)   # the attempt's rank group on each node's host
    watch: AttemptWatch | None = None
    resumed_from: str | None = None
    start_step: int = 0
    placement: list[dict[str, Any]] = field(default_factory=list)
    last_step_logged: float = 0.0
    step: int = 0                     # newest step reported by the ranks
    start_issued: float = 0.0         # when the agents were asked to spawn: the start timeout runs from here
    recorded: bool = False            # the journal has this attempt's row
    ended: bool = False               # ... and it is closed
    poll_refs: list[Any] | None = None
    poll_sent: float = 0.0
    exit_refs: list[Any] = field(default_factory=list)   # resolve when a rank exits (or after EXIT_WAIT_S)
    exits_recorded: set[int] = field(default_factory=set)   # rank pids whose end the journal has


@dataclass(frozen=True)
class SparePg:
    """A placement group whose job ended and whose GPUs were verified free: reused as it is by the
    next placement of the same bundles on the same nodes, removed after the pass otherwise. Ray
    retries a placement group that was created right after another was removed about a second
    later; a reused one is ready at once, and the GPUs never leave this run's reservation."""
    pg: PlacementGroup
    key: tuple[Any, ...]
    nodes: tuple[str, ...]


@dataclass
class Stopping:
    """A release in flight in a worker thread, and what to do when it is over (in the loop's thread)."""
    future: Future[teardown.Released]
    then: Callable[[teardown.Released], None]


@dataclass
class JobRun:
    job: Job
    core: Core                        # holds the job's state: every change is checked against the transitions
    attempts: int = 0
    restarts_without_progress: int = 0
    retry_at: float = 0.0
    current: Attempt | None = None
    stopping: Stopping | None = None
    kill_reason: str | None = None    # a kill asked for while the job was already being released
    learned: dict[str, float] = field(default_factory=dict)   # phase -> learned timeout (hang: auto)
    changes: dict[str, Any] = field(default_factory=dict)   # what the next attempt runs differently (OOM)
    # path -> identity of the COMPLETE marker found broken: a later attempt that saves that step again
    # writes a new marker, and the new checkpoint is not blamed for the old one
    bad_checkpoints: dict[Path, str] = field(default_factory=dict)
    last_ckpt_step: int = -1
    first_step: tuple[float, int] | None = None   # (time, step) of the first step this attempt: its speed

    @property
    def state(self) -> JobState:
        return self.core.state(self.job.name)

    @state.setter
    def state(self, new: JobState | str) -> None:
        self.core.move(self.job.name, new)
