"""The verdicts on an attempt, failure classes among them, as one enum.

A StrEnum: the journal stores the value ("crash", "oom", ...), and rows written before the enum
existed read back as the same members.
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    RUNNING = "running"
    DONE = "done"
    CRASH = "crash"      # a rank exited non-zero (its log says why)
    HANG = "hang"        # no progress for the phase's timeout
    OOM = "oom"          # CUDA out of memory in a rank's log, or the kernel's OOM killer
    LOST = "lost"        # a node agent died or stopped answering: the node, not the job
    FATAL = "fatal"      # an exit code the plan says a restart cannot mend (retry.on_exit_codes)

    @property
    def is_failure(self) -> bool:
        return self not in (Verdict.RUNNING, Verdict.DONE)
