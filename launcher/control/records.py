"""What the controller keeps per job and per attempt while a run goes on (the records, not the loop).

`JobRun.state` lives in the scheduling core (launcher/control/core.py): every change goes through
its transition table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from launcher.control.core import Core
from launcher.control.states import JobState
from launcher.node.messages import Released
from launcher.plan import Job
from launcher.supervision.watch import AttemptWatch


@dataclass
class Attempt:
    n: int
    held: list[dict[str, Any]] = field(default_factory=list)   # GPUs in our books: reserved, then placed
    watch: AttemptWatch | None = None
    resumed_from: str | None = None
    start_step: int = 0
    placement: list[dict[str, Any]] = field(default_factory=list)
    last_step_logged: float = 0.0
    step: int = 0                     # newest step reported by the ranks
    recorded: bool = False            # the journal has this attempt's row
    ended: bool = False               # ... and it is closed
    exits_recorded: set[int] = field(default_factory=set)   # rank pids whose end the journal has


# What to do once an attempt's release is over (in the controller's thread): finish, restart, fail.
AfterRelease = Callable[[Released], None]


@dataclass
class JobRun:
    job: Job
    core: Core                        # holds the job's state: every change is checked against the transitions
    attempts: int = 0
    restarts_without_progress: int = 0
    retry_at: float = 0.0
    current: Attempt | None = None
    stopping: AfterRelease | None = None   # a release is in flight; this runs when it is over
    kill_reason: str | None = None    # a kill asked for while the job was already being released
    learned: dict[str, float] = field(default_factory=dict)   # phase -> learned timeout (hang: auto)
    changes: dict[str, Any] = field(default_factory=dict)   # what the next attempt runs differently (OOM)
    # path -> identity of the COMPLETE marker found broken: a later attempt that saves that step again
    # writes a new marker, and the new checkpoint is not blamed for the old one
    bad_checkpoints: dict[Path, str] = field(default_factory=dict)
    last_ckpt_step: int = -1
    first_step: tuple[float, int] | None = None   # (time, step) of the first step this attempt: its speed
    progress_written: tuple[float, int] | None = None   # (time, step) the journal last got this job's progress

    @property
    def state(self) -> JobState:
        return self.core.state(self.job.name)

    @state.setter
    def state(self, new: JobState | str) -> None:
        self.core.move(self.job.name, new)
