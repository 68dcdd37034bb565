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


# Which rank's phase sets the job's allowance when ranks are in different phases: a rank waiting at
# a barrier in `training` while rank 0 saves is covered by the save timeout, not the step timeout;
# a rank still training while another is done is behind, and the step timeout watches it.
PHASE_PRIORITY = ("saving", "evaluating", "training", "done")


@dataclass
class AttemptWatch:
    """Progress tracking for one attempt of one job.

    Progress is anything the slowest rank moves: its step, the job's phase (evaluating, saving,
    back to training: each phase is timed from its own start), or its work units inside a phase
    (evaluation batches). Times are when the agents observed the ranks, not when the driver got
    round to judging them: a loop busy with another job must not turn that delay into a hang.
    """

    hang: HangSpec
    started: float = field(default_factory=time.time)
    learned_step_timeout: float | None = None     # carried over from earlier attempts
    last_step: int = -1
    last_progress: float = 0.0
    steps_seen: int = 0
    slowest_step: float = 0.0
    signature: tuple[int, str, int] | None = None  # (slowest step, job phase, slowest units in it)

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
            return self._failure(obs, failed)
        if all(c == 0 for c in codes.values()):
            obs.verdict = "done"
            return obs
        phase = self._job_phase(beats, len(ranks))
        units = min((b.get("progress", 0) for b in beats if b["phase"] == phase), default=0)
        signature = (step, phase, units)
        if signature != self.signature and phase != "start-up":
            # Step timing: only time spent in training counts; entering training (after an evaluation
            # or a save) was progress itself, so the clock restarted there.
            if phase == "training" and step > self.last_step >= 0 and step > 0:
                per_step = (now - self.last_progress) / (step - self.last_step)
                self.steps_seen += step - self.last_step
                if self.steps_seen > self.hang.warmup_steps:
                    self.slowest_step = max(self.slowest_step, per_step)
            if step > 0:
                self.last_step = max(self.last_step, step)
            self.last_progress = now
            self.signature = signature
        idle = now - self.last_progress
        limit = self._limit(phase)
        if limit is not None and idle > limit:
            obs.verdict = "hang"
            obs.detail = f"no progress for {idle:.0f}s in phase {phase} (timeout {limit:.0f}s) at step {step}"
        return obs

    def _failure(self, obs: Observation, failed: list[dict[str, Any]]) -> Observation:
        """Any failed rank's OOM makes the attempt an OOM (its peers then fail in a broken
        collective, often first); otherwise the lowest failed rank is the crash."""
        oom = next((r for r in failed if OOM_RE.search("\n".join(r["log_tail"][-40:]))), None)
        r = oom or failed[0]
        obs.verdict = "oom" if oom else "crash"
        obs.detail = f"rank {r['rank']} exited with {r['exit_code']}: " + " | ".join(r["log_tail"][-5:])
        return obs

    def _job_phase(self, beats: list[dict[str, Any]], n: int) -> str:
        """start-up until every rank beats, none is loading and (in training) a first step is done."""
        phases = {b["phase"] for b in beats}
        if len(beats) < n or "loading" in phases:
            return "start-up"
        phase = next(p for p in PHASE_PRIORITY if p in phases)
        if phase == "training" and self.last_step < 0 and min(b["step"] for b in beats) <= 0:
            return "start-up"
        return phase

    def _limit(self, phase: str) -> float | None:
        if phase == "start-up":
            return self.hang.startup
        if phase == "saving":
            return self.hang.save
        if phase == "evaluating":
            return self.hang.eval
        if phase == "done":
            return self.hang.save   # writing final outputs
        # Until the step time is learned, the start-up allowance still applies.
        return self.step_timeout() or self.hang.startup


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


def smaller_micro_batch(batch_size: int, grad_accum: int) -> tuple[int, int] | None:
    """After an OOM: the largest micro-batch of at most half the current one that divides it, with
    the accumulation that keeps the effective batch (micro-batch x accumulation) exactly the same.
    3 x 1 becomes 1 x 3 (1 x 2 would train on a smaller batch); None when it is already 1."""
    for smaller in range(batch_size // 2, 0, -1):
        if batch_size % smaller == 0:
            return smaller, grad_accum * (batch_size // smaller)
    return None
