"""A job's states in the controller and the only transitions between them.

    pending -> placing -> starting -> running -> stopping -> succeeded | waiting | failed | killed
    waiting -> pending (back-off over);  pending -> skipped (a need failed)

Any non-final state may end failed or killed (a launcher fault, bin/kill), placing/starting go to
stopping when they must be released. Every change goes through `move`, which refuses the rest:
a transition the controller did not plan for is a bug, and it fails that job loudly.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "pending"      # waiting for its needs or for GPUs
    PLACING = "placing"      # GPUs reserved with Ray, waiting for the reservation
    STARTING = "starting"    # agents asked to spawn the ranks
    RUNNING = "running"
    STOPPING = "stopping"    # being released (stacks, TERM grace, GPU memory), outcome decided after
    WAITING = "waiting"      # back-off before a restart
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    KILLED = "killed"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def holds_gpus(self) -> bool:
        return self in (JobState.PLACING, JobState.STARTING, JobState.RUNNING, JobState.STOPPING)


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED, JobState.KILLED})
LIVE = (JobState.PLACING, JobState.STARTING, JobState.RUNNING)   # an attempt that has not begun its release

S = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.PENDING: frozenset({S.PLACING, S.SKIPPED, S.FAILED, S.KILLED}),
    S.PLACING: frozenset({S.STARTING, S.STOPPING, S.FAILED, S.KILLED}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.FAILED, S.KILLED}),
    S.RUNNING: frozenset({S.STOPPING, S.FAILED, S.KILLED}),
    S.STOPPING: frozenset({S.SUCCEEDED, S.WAITING, S.FAILED, S.KILLED}),
    S.WAITING: frozenset({S.PENDING, S.FAILED, S.KILLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.SKIPPED: frozenset(),
    S.KILLED: frozenset(),
}


class TransitionError(RuntimeError):
    pass


def move(job: str, current: JobState, new: JobState) -> JobState:
    """`new`, if the table allows it from `current` (staying put is always allowed)."""
    if new != current and new not in TRANSITIONS[current]:
        raise TransitionError(f"{job}: no transition {current} -> {new}")
    return new
