"""Watching one attempt, kept pure: given what the agents report, is it running, done, or failed how.

The controller feeds `observe()` with agent reports and acts on the verdict (what then happens is
`supervision.policy`); tests step it one report at a time with made-up reports, no processes needed.
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass, field
from launcher.heartbeat import Heartbeat
from launcher.node.messages import RankStatus
from launcher.spec import HangSpec
from launcher.supervision.failure import Verdict

OOM_RE = re.compile(r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|std::bad_alloc", re.I)


def exit_text(code: int | None) -> str:
    """An exit code as people read it: -9 (our child, killed) and 137 (a shell's or a wrapper's
    128 + 9) both say which signal ended it; the OOM killer is told apart before this is used."""
    sig = -code if code is not None and code < 0 else (code - 128 if code is not None and 128 < code < 160 else None)
    try:
        return f"{code} (killed by {signal.Signals(sig).name})" if sig else str(code)
    except ValueError:
        return str(code)


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


# The phases whose timeout may be `auto`, and what one sample of each is: the time one training
# step took, one evaluation batch, one whole save.
LEARNED_PHASES = ("training", "evaluating", "saving")


@dataclass
class AttemptWatch:
    """Progress tracking for one attempt of one job.

    Progress is anything the slowest rank moves: its step, the job's phase (evaluating, saving,
    back to training: each phase is timed from its own start), or its work units inside a phase
    (evaluation batches). Times are when the agents observed the ranks, not when the controller got
    round to judging them: a loop busy with another job must not turn that delay into a hang.
    """

    hang: HangSpec
    started: float = field(default_factory=time.time)
    exit_classes: dict[int, str] = field(default_factory=dict)   # retry.on_exit_codes: exit code -> failure class
    share_mib: int | None = None   # a packed job: the GPU memory it was given beside others
    learned: dict[str, float] = field(default_factory=dict)   # phase -> timeout; carried over from earlier attempts
    last_step: int = -1
    last_progress: float = 0.0
    steps_seen: int = 0
    slowest: dict[str, float] = field(default_factory=dict)   # phase -> slowest sample this attempt
    signature: tuple[int, str, int] | None = None  # (slowest step, job phase, slowest units in it)

    def __post_init__(self) -> None:
        self.last_progress = self.started
        self.learned = dict(self.learned)

    def _configured(self, phase: str) -> float | str:
        return {"training": self.hang.step, "evaluating": self.hang.eval, "saving": self.hang.save}[phase]

    def timeout(self, phase: str) -> float | None:
        """A learned phase's timeout: None until known; fixed from the plan, or learned (auto)."""
        configured = self._configured(phase)
        if configured != "auto":
            return float(configured)
        warm = self.steps_seen > self.hang.warmup_steps if phase == "training" else True
        if warm and self.slowest.get(phase, 0) > 0:
            learned = max(self.hang.min_step, self.hang.factor * self.slowest[phase])
            self.learned[phase] = max(learned, self.learned.get(phase, 0.0))
        return self.learned.get(phase)

    def step_timeout(self) -> float | None:
        return self.timeout("training")

    def _sample(self, phase: str, seconds: float) -> None:
        self.slowest[phase] = max(self.slowest.get(phase, 0.0), seconds)

    def observe(self, ranks: list[RankStatus], now: float | None = None, memory_mib: float | None = None) -> Observation:
        """`memory_mib`: the job's memory on its GPU as the monitor last measured it (packed jobs)."""
        now = time.time() if now is None else now
        codes = {r.rank: r.exit_code for r in ranks}
        beats = [r.heartbeat for r in ranks if r.heartbeat]
        rank0 = next((r.heartbeat for r in ranks if r.rank == 0 and r.heartbeat), None)
        stepping = [b for b in beats if b.counts_steps] or beats
        step = min((b.step for b in stepping), default=0) if len(beats) == len(ranks) else 0
        obs = Observation(Verdict.RUNNING, exit_codes=codes, step=rank0.step if rank0 else step,
                          total_steps=rank0.total_steps if rank0 else None, loss=rank0.loss if rank0 else None)
        failed = [r for r in ranks if r.exit_code not in (None, 0)]
        if failed:
            return self._failure(obs, failed)
        if all(c == 0 for c in codes.values()):
            obs.verdict = Verdict.DONE
            return obs
        if self.share_mib and memory_mib is not None and memory_mib > self.share_mib:
            # Its neighbours were promised the rest of the GPU: stopped here, not when they fail.
            obs.verdict = Verdict.OOM
            obs.detail = (f"outgrew its GPU share: {memory_mib:.0f} MiB measured, {self.share_mib} MiB shared "
                          "(resources.gpu_memory, or the need measured in earlier runs)")
            return obs
        phase = self._job_phase(beats, len(ranks))
        units = min((b.progress for b in beats if b.phase == phase), default=0)
        signature = (step, phase, units)
        if signature != self.signature and phase != "start-up":
            self._learn(phase, step, units, now)
            if step > 0:
                self.last_step = max(self.last_step, step)
            self.last_progress = now
            self.signature = signature
        idle = now - self.last_progress
        limit = self._limit(phase)
        if limit is not None and idle > limit:
            obs.verdict = Verdict.HANG
            obs.detail = f"no progress for {idle:.0f}s in phase {phase} (timeout {limit:.0f}s) at step {step}"
            watched = [b for b in beats if b.signals]
            if watched:   # a command job: what each signal said, for the rank that moved least
                b = min(watched, key=lambda b: b.progress)
                obs.detail += f"; rank {b.rank}'s signals idle: " + ", ".join(f"{k} {v:.0f}s" for k, v in b.signals.items())
        return obs

    def _learn(self, phase: str, step: int, units: int, now: float) -> None:
        """What the time since the last progress was a sample of. Entering a phase is progress
        itself (its clock restarts there), so only time spent inside one phase is a sample."""
        if self.signature is None:
            return
        prev_step, prev_phase, prev_units = self.signature
        spent = now - self.last_progress
        if phase == "training" and prev_phase == "training" and step > prev_step and step > 0:
            self.steps_seen += step - prev_step
            if self.steps_seen > self.hang.warmup_steps:
                self._sample("training", spent / (step - prev_step))
        elif phase == "evaluating" and prev_phase == "evaluating" and step == prev_step and units > prev_units:
            self._sample("evaluating", spent / (units - prev_units))
        elif prev_phase == "saving" and phase != "saving":
            self._sample("saving", spent)   # one whole save

    def _failure(self, obs: Observation, failed: list[RankStatus]) -> Observation:
        """Any failed rank's OOM makes the attempt an OOM (its peers then fail in a broken
        collective, often first): CUDA's message in its log, or the kernel's OOM killer, which
        leaves no log line (the agent saw the kill in the memory cgroup's counter). Otherwise the
        first rank to exit is the crash (its peers die after it, of the broken collective), the
        lowest one where the agents saw no order."""
        failed = sorted(failed, key=lambda r: (r.exited_at is None, r.exited_at or 0.0, r.rank))
        killer = next((r for r in failed if r.oom_killed), None)
        if killer is not None:
            obs.verdict = Verdict.OOM
            obs.detail = f"rank {killer.rank} exited with {killer.exit_code}: {killer.oom_killed}"
            return obs
        mapped = next((r for r in failed if r.exit_code in self.exit_classes), None)
        oom = next((r for r in failed if OOM_RE.search("\n".join(r.log_tail[-40:]))), None)
        r = mapped or oom or failed[0]
        if mapped is not None:   # the plan knows what its script's codes mean better than its log does
            obs.verdict = Verdict(self.exit_classes[mapped.exit_code])
        else:
            obs.verdict = Verdict.OOM if oom else Verdict.CRASH
        obs.detail = f"rank {r.rank} exited with {exit_text(r.exit_code)}: " + " | ".join(r.log_tail[-5:])
        return obs

    def _job_phase(self, beats: list[Heartbeat], n: int) -> str:
        """start-up until every rank beats, none is loading and (in training) a first step is done."""
        phases = {b.phase for b in beats}
        if len(beats) < n or "loading" in phases:
            return "start-up"
        phase = next(p for p in PHASE_PRIORITY if p in phases)
        if phase == "training" and self.last_step < 0 and min(b.step for b in beats) <= 0:
            return "start-up"
        return phase

    def _limit(self, phase: str) -> float | None:
        if phase == "start-up":
            return self.hang.startup
        if phase == "done":   # writing final outputs
            return self.timeout("saving") or self.hang.startup
        # Until an auto phase's timeout is learned, the start-up allowance applies.
        return self.timeout(phase) or self.hang.startup
