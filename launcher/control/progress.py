"""How often a running job's progress goes into the journal.

Every poll (4 a second per job) brings a heartbeat; writing each one would be a dozen fsyncs a
second per job, which on NFS (where the run directory lives on a cluster) costs the driver real
time. Status needs the step, not every heartbeat: a job's progress is written at most once per
PROGRESS_EVERY_S, and at once when it is the job's first or last step.
"""

from __future__ import annotations

PROGRESS_EVERY_S = 1.0


def progress_due(written: tuple[float, int] | None, now: float, step: int, total: int | None) -> bool:
    """written: (time, step) of the last write this attempt, or None."""
    if written is None:
        return True
    last_time, last_step = written
    if step == last_step:
        return now - last_time >= PROGRESS_EVERY_S * 5   # the heartbeat time alone: rarely
    if total and step >= total:
        return True
    return now - last_time >= PROGRESS_EVERY_S
