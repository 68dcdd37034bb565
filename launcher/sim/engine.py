"""The simulation: the controller core and the failure policy on a virtual clock.

Each placement starts at once (plus `start_s` launcher overhead), runs the job's remaining work,
and ends, fails (crash / OOM / lost node) or hangs (detected `hang_timeout_s` after it stopped
moving) as the seeded fault draw says. A failed job resumes from its last checkpoint after the
policy's back-off. The bound is computed from the work the jobs really did, attempts included.
"""

from __future__ import annotations

import heapq
import random
import time
from dataclasses import dataclass, field

from launcher.control.core import Core, JobNeeds
from launcher.control.states import JobState
from launcher.scheduling.books import Books
from launcher.scheduling.bounds import Bounds, bounds
from launcher.scheduling.policy import make
from launcher.sim.dag import SimJob
from launcher.spec import RetrySpec
from launcher.supervision.failure import Verdict
from launcher.supervision.policy import FailurePolicy, History


@dataclass(frozen=True)
class Faults:
    fail: float = 0.0             # chance an attempt crashes / OOMs / loses its node
    hang: float = 0.0             # chance an attempt hangs
    hang_timeout_s: float = 300.0
    checkpoint_every: float = 0.1  # share of the job's work between checkpoints


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 4
    gpus_per_node: int = 8
    policy: str = "backfill"
    start_s: float = 0.0           # launcher overhead from placement to the ranks' start
    release_s: float = 0.0         # ... and from their exit to the GPUs being free
    estimate_sigma: float = 0.0    # lognormal error of the duration estimates the policy sees
    faults: Faults = Faults()
    retry: RetrySpec = field(default_factory=lambda: RetrySpec(max_restarts=3, backoff=5.0, backoff_max=300.0,
                                                               no_progress_limit=3))
    seed: int = 0


@dataclass
class SimResult:
    makespan_s: float
    bounds: Bounds
    jobs: int
    succeeded: int
    failed: int
    skipped: int
    attempts: int
    placements: int
    decide_s: float               # wall time inside the core's scheduling and books
    wall_s: float

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.bounds.work if self.bounds.work else 1.0

    @property
    def ms_per_decision(self) -> float:
        return 1000 * self.decide_s / max(1, self.placements)


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    kind: str = field(compare=False)      # end | fail | hang | retry
    job: str = field(compare=False)
    attempt: int = field(compare=False)
    verdict: Verdict | None = field(compare=False, default=None)


class Simulator:
    def __init__(self, jobs: list[SimJob], cfg: SimConfig):
        self.cfg, self.jobs = cfg, {j.name: j for j in jobs}
        self.rng = random.Random(cfg.seed * 7919 + 17)
        est = {j.name: j.seconds * (self.rng.lognormvariate(0, cfg.estimate_sigma) if cfg.estimate_sigma else 1.0)
               for j in jobs}
        books = Books.of((f"node{i:03d}", cfg.gpus_per_node, None) for i in range(cfg.nodes))
        self.core = Core([JobNeeds(j.name, j.needs, j.shape, i, est[j.name]) for i, j in enumerate(jobs)],
                         books, make(cfg.policy))
        self.failure_policy = FailurePolicy(cfg.retry)
        self.done_work = {n: 0.0 for n in self.jobs}     # checkpointed work, seconds
        self.used = {n: 0.0 for n in self.jobs}          # rank time of every attempt (the jobs' own work)
        self.attempts = {n: 0 for n in self.jobs}
        self.restarts = {n: 0 for n in self.jobs}
        self.without_progress = {n: 0 for n in self.jobs}
        self.started_at: dict[str, float] = {}
        self.nodes_of: dict[str, tuple[str, ...]] = {}
        self.events: list[_Event] = []
        self.seq = 0
        self.placements = 0
        self.decide_s = 0.0
        self.end = 0.0

    def _push(self, t: float, kind: str, job: str, attempt: int, verdict: Verdict | None = None) -> None:
        self.seq += 1
        heapq.heappush(self.events, _Event(t, self.seq, kind, job, attempt, verdict))

    def _start(self, name: str, nodes: tuple[str, ...], now: float) -> None:
        c, f = self.cfg, self.cfg.faults
        self.core.move(name, JobState.PLACING)
        self.core.move(name, JobState.STARTING)
        self.core.move(name, JobState.RUNNING)
        self.attempts[name] += 1
        self.nodes_of[name] = nodes
        start = now + c.start_s
        self.started_at[name] = start
        left = self.jobs[name].seconds - self.done_work[name]
        draw = self.rng.random()
        if draw < f.fail:
            verdict = self.rng.choice([Verdict.CRASH, Verdict.CRASH, Verdict.OOM, Verdict.LOST])
            self._push(start + self.rng.random() * left, "fail", name, self.attempts[name], verdict)
        elif draw < f.fail + f.hang:
            self._push(start + self.rng.random() * left + f.hang_timeout_s, "hang", name, self.attempts[name],
                       Verdict.HANG)
        else:
            self._push(start + left, "end", name, self.attempts[name])

    def _pass(self, now: float) -> None:
        t0 = time.perf_counter()
        while blocked := self.core.blocked():   # skipping one may block its own dependants
            for name, _need in blocked:
                self.core.move(name, JobState.SKIPPED)
        plan = self.core.schedule(now)
        for p in plan.placements:
            self.core.hold(p, now)
        self.decide_s += time.perf_counter() - t0
        self.placements += len(plan.placements)
        for p in plan.placements:
            self._start(p.name, p.nodes, now)

    def _ended(self, ev: _Event) -> None:
        name, now = ev.job, ev.time
        ran = now - self.started_at[name]
        self.core.move(name, JobState.STOPPING)
        if ev.kind == "end":
            self.used[name] += ran
            self.done_work[name] = self.jobs[name].seconds
            self.core.release(name)
            self.core.move(name, JobState.SUCCEEDED)
            return
        moved = ran - (self.cfg.faults.hang_timeout_s if ev.kind == "hang" else 0.0)
        self.used[name] += ran
        every = self.cfg.faults.checkpoint_every * self.jobs[name].seconds
        before = self.done_work[name]
        self.done_work[name] = before + every * int(max(0.0, moved) // every) if every > 0 else before
        self.without_progress[name] = 0 if self.done_work[name] > before else self.without_progress[name]
        self.core.release(name)
        assert ev.verdict is not None
        d = self.failure_policy.decide(ev.verdict, History(self.restarts[name], self.without_progress[name],
                                                           nodes=self.nodes_of[name]))
        if d.retry:
            self.restarts[name] += 1
            self.without_progress[name] += 1
            self.core.move(name, JobState.WAITING)
            self._push(now + d.delay, "retry", name, self.attempts[name])
        else:
            self.core.move(name, JobState.FAILED)

    def run(self) -> SimResult:
        t_wall = time.perf_counter()
        now = 0.0
        self._pass(now)
        while self.events:
            now = self.events[0].time
            while self.events and self.events[0].time == now:   # everything that happens at `now` first
                ev = heapq.heappop(self.events)
                if ev.kind == "retry":
                    self.core.move(ev.job, JobState.PENDING)
                else:
                    self._ended(ev)
                    self.end = max(self.end, now)
            if self.cfg.release_s:
                now += self.cfg.release_s
            self._pass(now)
        states = self.core.states.values()
        ran = {n: s for n, s in self.used.items() if s > 0}
        jobs = self.jobs
        b = bounds({n: tuple(u for u in jobs[n].needs if u in ran) for n in ran}, ran,
                   {n: jobs[n].shape.nodes for n in ran}, {n: jobs[n].shape.gpus_per_node for n in ran},
                   self.cfg.nodes, self.cfg.gpus_per_node)
        return SimResult(self.end, b, len(jobs), sum(s == JobState.SUCCEEDED for s in states),
                         sum(s == JobState.FAILED for s in states), sum(s == JobState.SKIPPED for s in states),
                         sum(self.attempts.values()), self.placements, self.decide_s, time.perf_counter() - t_wall)


def simulate(jobs: list[SimJob], cfg: SimConfig) -> SimResult:
    return Simulator(jobs, cfg).run()
