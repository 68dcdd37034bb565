"""Supervisor decisions, kept pure: given what the agents report, what happens to an attempt.

The driver feeds `observe()` with agent reports and acts on the verdict; tests step it one
report at a time with made-up reports, no processes needed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from launcher.spec import HangSpec, RetrySpec

OOM_RE = re.compile(r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|std::bad_alloc", re.I)

Verdict = Literal["running", "done", "crash", "hang", "oom", "lost"]


@dataclass
class Observation:
    verdict: Verdict
    detail: str = ""
    exit_codes: dict[int, int | None] = field(default_factory=dict)
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None


@dataclass
class AttemptWatch:
    """Progress tracking for one attempt of one job."""

    hang: HangSpec
    started: float = field(default_factory=time.time)
    learned_step_timeout: float | None = None     # carried over from earlier attempts
    last_step: int = -1
    last_progress: float = 0.0
    steps_seen: int = 0
    slowest_step: float = 0.0

    def __post_init__(self) -> None:
        self.last_progress = self.started

    def step_timeout(self) -> float | None:
        """None until known: fixed from the plan, or learned after warm-up (auto)."""
        if self.hang.step != "auto":
            return float(self.hang.step)
        if self.steps_seen > self.hang.warmup_steps and self.slowest_step > 0:
            learned = max(self.hang.min_step, self.hang.factor * self.slowest_step)
            self.learned_step_timeout = max(learned, self.learned_step_timeout or 0.0)
        return self.learned_step_timeout

    def observe(self, ranks: list[dict[str, Any]], now: float | None = None) -> Observation:
        now = time.time() if now is None else now
        codes = {r["rank"]: r["exit_code"] for r in ranks}
        beats = [r["heartbeat"] for r in ranks if r["heartbeat"]]
        rank0 = next((r["heartbeat"] for r in ranks if r["rank"] == 0 and r["heartbeat"]), None)
        step = min((b["step"] for b in beats), default=0) if len(beats) == len(ranks) else 0
        obs = Observation("running", exit_codes=codes, step=rank0["step"] if rank0 else step,
                          total_steps=rank0["total_steps"] if rank0 else None, loss=rank0.get("loss") if rank0 else None)
        failed = [r for r in ranks if r["exit_code"] not in (None, 0)]
        if failed:
            r = failed[0]
            text = "\n".join(r["log_tail"][-40:])
            obs.verdict = "oom" if OOM_RE.search(text) else "crash"
            obs.detail = f"rank {r['rank']} exited with {r['exit_code']}: " + " | ".join(r["log_tail"][-5:])
            return obs
        if all(c == 0 for c in codes.values()):
            obs.verdict = "done"
            return obs
        # Progress = the slowest live rank's step moved (a rank stuck in a collective stalls all).
        # Step 0 (loading, or the first step still running) is not progress: the start-up
        # allowance counts from the attempt's start until the first step completes.
        if beats and step > self.last_step and step > 0:
            if self.last_step >= 0:
                per_step = (now - self.last_progress) / (step - self.last_step)
                self.steps_seen += step - self.last_step
                if self.steps_seen > self.hang.warmup_steps:
                    self.slowest_step = max(self.slowest_step, per_step)
            self.last_step, self.last_progress = step, now
        phases = {b["phase"] for b in beats}
        idle = now - self.last_progress
        limit, what = self._limit(phases, beats, len(ranks))
        if limit is not None and idle > limit:
            obs.verdict = "hang"
            obs.detail = f"no progress for {idle:.0f}s in phase {what} (timeout {limit:.0f}s) at step {step}"
        return obs

    def _limit(self, phases: set[str], beats: list[dict[str, Any]], n: int) -> tuple[float | None, str]:
        if len(beats) < n or self.last_step < 0 or phases <= {"loading"}:
            return self.hang.startup, "start-up"
        if "saving" in phases:
            return self.hang.save, "saving"
        if "evaluating" in phases:
            return self.hang.eval, "evaluating"
        if phases <= {"done"}:
            return self.hang.save, "finishing"
        # Until the step time is learned, the start-up allowance still applies.
        return self.step_timeout() or self.hang.startup, "training"


@dataclass
class RetryDecision:
    retry: bool
    delay: float
    reason: str


def decide_retry(retry: RetrySpec, restarts_so_far: int, restarts_without_progress: int, verdict: Verdict) -> RetryDecision:
    """Restart with exponential backoff until max_restarts, or stop a job that keeps failing in place."""
    if restarts_so_far >= retry.max_restarts:
        return RetryDecision(False, 0, f"{verdict}; gave up after {restarts_so_far} restart(s) (retry.max_restarts)")
    if restarts_without_progress >= retry.no_progress_limit:
        return RetryDecision(False, 0, f"{verdict}; no new checkpoint across {restarts_without_progress} restarts "
                                       f"(retry.no_progress_limit): not looping")
    delay = min(retry.backoff * (2 ** restarts_so_far), retry.backoff_max)
    return RetryDecision(True, delay, f"{verdict}; restart {restarts_so_far + 1}/{retry.max_restarts} in {delay:.0f}s")
