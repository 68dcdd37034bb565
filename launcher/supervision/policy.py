"""What happens after a failed attempt: a pure decision, journalled and replayed by bin/resume.

`FailurePolicy.decide` takes the failure class and the job's history and returns a `Decision`:
restart (after a back-off), restart elsewhere (the node was lost), restart with a smaller
micro-batch (OOM), or give up. The controller and the simulator act on the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from launcher.spec import RetrySpec
from launcher.supervision.failure import Verdict


class Action(StrEnum):
    RESTART = "restart"
    RESTART_ELSEWHERE = "restart_elsewhere"
    CHANGE_BATCH = "change_batch"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class BatchChange:
    batch_size: int
    grad_accum: int


@dataclass(frozen=True)
class Decision:
    action: Action
    delay: float
    reason: str
    batch: BatchChange | None = None          # what the next attempt (or a resumed run) runs with
    avoid_nodes: tuple[str, ...] = ()         # RESTART_ELSEWHERE: where it must not go first

    @property
    def retry(self) -> bool:
        return self.action is not Action.GIVE_UP


@dataclass(frozen=True)
class History:
    """What the policy needs to know about the job so far."""
    restarts: int                     # attempts that already failed and were restarted
    restarts_without_progress: int    # ... in a row without a new complete checkpoint
    batch_size: int = 1
    grad_accum: int = 1
    nodes: tuple[str, ...] = ()       # where the failed attempt ran


@dataclass(frozen=True)
class FailurePolicy:
    retry: RetrySpec

    def decide(self, failure: Verdict, h: History) -> Decision:
        r = self.retry
        # An OOM's smaller micro-batch is kept even when giving up: bin/resume starts with it.
        smaller = smaller_micro_batch(h.batch_size, h.grad_accum) if failure == Verdict.OOM else None
        batch = BatchChange(*smaller) if smaller else None
        if failure == Verdict.FATAL:
            return Decision(Action.GIVE_UP, 0, "fatal (retry.on_exit_codes): a restart would fail the same way",
                            batch=batch)
        if h.restarts >= r.max_restarts:
            return Decision(Action.GIVE_UP, 0, f"{failure}; gave up after {h.restarts} restart(s) (retry.max_restarts)",
                            batch=batch)
        if h.restarts_without_progress >= r.no_progress_limit:
            return Decision(Action.GIVE_UP, 0, f"{failure}; no new checkpoint across {h.restarts_without_progress} "
                                               "restarts (retry.no_progress_limit): not looping", batch=batch)
        delay = min(r.backoff * (2 ** h.restarts), r.backoff_max)
        reason = f"{failure}; restart {h.restarts + 1}/{r.max_restarts} in {delay:.0f}s"
        if batch is not None:
            return Decision(Action.CHANGE_BATCH, delay, reason, batch=batch)
        if failure == Verdict.LOST and h.nodes:
            return Decision(Action.RESTART_ELSEWHERE, delay, reason, avoid_nodes=h.nodes)
        return Decision(Action.RESTART, delay, reason)


def checkpoint_suspect(verdict: Verdict, resumed_from: str | None, step: int, start_step: int) -> bool:
    """Whether a failed attempt may have died loading its checkpoint: it crashed after resuming
    and before getting past the step it resumed at. The checkpoint is then verified in full."""
    return verdict == Verdict.CRASH and resumed_from is not None and step <= start_step


def smaller_micro_batch(batch_size: int, grad_accum: int) -> tuple[int, int] | None:
    """After an OOM: the largest micro-batch of at most half the current one that divides it, with
    the accumulation that keeps the effective batch (micro-batch x accumulation) exactly the same.
    3 x 1 becomes 1 x 3 (1 x 2 would train on a smaller batch); None when it is already 1."""
    for smaller in range(batch_size // 2, 0, -1):
        if batch_size % smaller == 0:
            return smaller, grad_accum * (batch_size // smaller)
    return None
