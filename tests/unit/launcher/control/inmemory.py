"""An in-memory executor and a fake clock for the controller's tests (no Ray, no processes).

Each started attempt is a scripted group of ranks living in virtual time: every `wait` that finds
nothing to report moves the clock one tick and the ranks one step, and each running attempt
reports what its hosts would (heartbeats, exit codes). Ranks write what real ones leave behind
for the controller to read: complete checkpoints and result.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from launcher import checkpoints
from launcher.contract.result import Result, write_result
from launcher.control.executor import (AttemptFailed, Event, NodesChanged, ReleaseDone, ReleaseOrder, Reported,
                                       Reserved, ReserveOrder, Spawned, StartOrder)
from launcher.heartbeat import Heartbeat
from launcher.node.messages import AgentReport, BundleInfo, RankStatus, Released, SpawnedRank, Started
from launcher.spec import JobFile
from launcher.supervision.failure import Verdict

TICK = 1.0


class Clock:
    def __init__(self, t: float = 1_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass(frozen=True)
class Script:
    """How one attempt's ranks behave."""
    total_steps: int = 4
    exit_code: int = 0            # once they reach `stop_at` (or the total)
    stop_at: int | None = None    # the step at which they exit with exit_code; None: at the end
    log: tuple[str, ...] = ()     # the failed rank's last log lines
    stall_at: int | None = None   # stop beating at this step and never exit: a hang
    save_every: int = 0           # a complete checkpoint every this many steps
    lost: bool = False            # the host dies instead of spawning the ranks
    result: str | None = "succeeded"   # what result.json says when they exit 0


@dataclass
class _Sim:
    order: StartOrder
    script: Script
    step: int
    exited: int | None = None
    pids: list[int] = field(default_factory=list)


class InMemoryExecutor:
    def __init__(self, clock: Clock, scripts: dict[str, list[Script]] | None = None):
        self.clock = clock
        self.scripts = scripts or {}
        self.orders: list[object] = []
        self.times: list[float] = []    # the clock when each order was given
        self.queue: list[Event] = []
        self.sims: dict[tuple[str, int], _Sim] = {}
        self.reserved: set[tuple[str, int]] = set()
        self.passes = 0
        self.next_pid = 5000
        self.closed = False
        self.hold_releases = False      # a release answers only once this is False again
        self.held: list[ReleaseOrder] = []
        self.changes: list[tuple[float, NodesChanged]] = []   # (clock, change): nodes that join or leave then

    def script(self, job: str, attempt: int) -> Script:
        s = self.scripts.get(job, [Script()])
        return s[min(attempt, len(s)) - 1]

    # ------------------------------------------------------------------ orders

    def _order(self, o: object) -> None:
        self.orders.append(o)
        self.times.append(self.clock.t)

    def reserve(self, o: ReserveOrder) -> None:
        self._order(o)
        self.reserved.add((o.job, o.attempt))
        g = o.shape.gpus_per_node
        bundles = tuple(BundleInfo(n, f"198.18.0.{i + 1}", f"host{i}", tuple(str(k) for k in range(g)))
                        for i, n in enumerate(o.nodes))
        self.queue.append(Reserved(o.job, o.attempt, bundles))

    def start(self, o: StartOrder) -> None:
        self._order(o)
        script = self.script(o.job, o.attempt)
        if script.lost:
            self.queue.append(AttemptFailed(o.job, o.attempt, Verdict.LOST, "node agent lost: RayActorError"))
            return
        jf = JobFile.model_validate_json(o.job_file.read_text())
        start = checkpoints.step_of(Path(jf.resume_from)) or 0 if jf.resume_from else 0
        sim = _Sim(o, script, start)
        replies = []
        for i, b in enumerate(o.bundles):
            ranks = []
            for r in range(i * o.ranks_per_node, (i + 1) * o.ranks_per_node):
                self.next_pid += 1
                sim.pids.append(self.next_pid)
                ranks.append(SpawnedRank(r, self.next_pid, 1.0, self.next_pid, b.node))
            replies.append(Started(b, ranks))
        self.sims[(o.job, o.attempt)] = sim
        self.queue.append(Spawned(o.job, o.attempt, tuple(replies)))

    def release(self, o: ReleaseOrder) -> None:
        self._order(o)
        if self.hold_releases:
            self.held.append(o)
            return
        sim = self.sims.pop((o.job, o.attempt), None)
        codes = {r: (sim.exited if sim.exited is not None else -15) for r in range(len(sim.pids))} if sim else {}
        problem = checkpoints.verify(o.verify, deep=True) if o.verify is not None else None
        self.queue.append(ReleaseDone(o.job, o.attempt, Released(exit_codes=codes, checkpoint_problem=problem)))

    def let_releases_go(self) -> None:
        self.hold_releases = False
        held, self.held = self.held, []
        for o in held:
            i = self.orders.index(o)
            del self.orders[i], self.times[i]
            self.release(o)

    def end_pass(self) -> None:
        self.passes += 1

    def wake(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    # ------------------------------------------------------------------ events

    def wait(self, until: float) -> list[Event]:
        due = [c for t, c in self.changes if t <= self.clock.t]
        self.changes = [(t, c) for t, c in self.changes if t > self.clock.t]
        self.queue += due
        if not self.queue:
            self.clock.t = max(self.clock.t, min(until, self.clock.t + TICK))
            for sim in self.sims.values():
                self._advance(sim)
                self.queue.append(self._report(sim))
        out, self.queue = self.queue, []
        return out

    def _advance(self, sim: _Sim) -> None:
        s, o = sim.script, sim.order
        if sim.exited is not None or (s.stall_at is not None and sim.step >= s.stall_at):
            return
        end = s.stop_at if s.stop_at is not None else s.total_steps
        if sim.step >= end:
            sim.exited = s.exit_code
            if sim.exited == 0 and s.result is not None:
                write_result(o.job_root / "result.json", Result(s.result))
            return
        sim.step += 1
        if s.save_every and sim.step % s.save_every == 0:
            ck = o.job_root / "checkpoints" / f"checkpoint-{sim.step}"
            ck.mkdir(parents=True, exist_ok=True)
            (ck / "state.json").write_text('{"step": %d}' % sim.step)
            checkpoints.mark_complete(ck, sim.step)

    def _report(self, sim: _Sim) -> Reported:
        s, o, now = sim.script, sim.order, self.clock.t
        phase = "done" if sim.exited == 0 else "training"
        reports = []
        for i, b in enumerate(o.bundles):
            ranks = []
            for r in range(i * o.ranks_per_node, (i + 1) * o.ranks_per_node):
                beat = Heartbeat(r, sim.step, s.total_steps, phase, time=now, loss=1.0 / (1 + sim.step),
                                 attempt=o.attempt)
                ranks.append(RankStatus(r, sim.pids[r], 1.0, sim.exited, beat,
                                        log_tail=list(s.log) if sim.exited else [],
                                        exited_at=now if sim.exited is not None else None))
            reports.append(AgentReport(b.node, ranks, [], time=now))
        return Reported(o.job, o.attempt, tuple(reports))
