"""The controller's pure core: job states, readiness, the books and the scheduling policy.

No Ray, no clock of its own: the controller (launcher/control/controller.py) and the simulator (launcher/sim) both
hold one `Core`, move jobs through it, ask it what to place now, and tell it where jobs run and
when they are expected to end. Readiness is kept incrementally (a job becomes ready when its last
need succeeds), so a pass costs the ready jobs, not the whole DAG: 10,000-job plans stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from launcher.control.states import JobState, move
from launcher.scheduling.books import Books
from launcher.scheduling.model import Candidate, Holding, Placement, Shape, Share
from launcher.scheduling.policy import Pass, Policy
from launcher.scheduling.priority import priorities
from launcher.scheduling.queue import ReadyQueue


@dataclass(frozen=True)
class JobNeeds:
    name: str
    needs: tuple[str, ...]
    shape: Shape
    order: int
    estimate_s: float


class Core:
    def __init__(self, jobs: Iterable[JobNeeds], books: Books, policy: Policy,
                 initial: Mapping[str, JobState] | None = None):
        self.jobs = {j.name: j for j in jobs}
        self.books, self.policy = books, policy
        self.states = {n: (initial or {}).get(n, JobState.PENDING) for n in self.jobs}
        self.children: dict[str, list[str]] = {n: [] for n in self.jobs}
        for j in self.jobs.values():
            for u in j.needs:
                self.children[u].append(j.name)
        self.estimates = {n: j.estimate_s for n, j in self.jobs.items()}
        self.holdings: dict[str, Holding] = {}
        self.quarantined: list[tuple[str, int]] = []   # GPUs whose memory never came back: held for good
        self.avoid: dict[str, frozenset[str]] = {}      # job -> nodes its next placement avoids (a lost node)
        self.version = 0    # grows when a pass could place something new: a job ready or ended, GPUs back
        self._ready: set[str] = set()
        self.queue = ReadyQueue()
        self._blocked: set[str] = {n for n in self.jobs if self._is_blocked(n)}
        self.reprioritise()

    # ------------------------------------------------------------------ states

    def state(self, name: str) -> JobState:
        return self.states[name]

    def move(self, name: str, new: JobState | str) -> None:
        new = JobState(new)
        old = self.states[name]
        self.states[name] = move(name, old, new)
        if new == old:
            return
        self._unready(name)
        if new == JobState.PENDING or new.is_terminal:
            self.version += 1
        if new == JobState.PENDING and self._is_ready(name):
            self._make_ready(name)
        if new == JobState.PENDING and self._is_blocked(name):
            self._blocked.add(name)
        if new == JobState.SUCCEEDED:
            for c in self.children[name]:
                if self._is_ready(c):
                    self._make_ready(c)
        elif new in (JobState.FAILED, JobState.SKIPPED, JobState.KILLED):
            self._blocked.update(c for c in self.children[name] if self.states[c] == JobState.PENDING)

    def _make_ready(self, name: str) -> None:
        if name not in self._ready:
            self._ready.add(name)
            j = self.jobs[name]
            self.queue.add(Candidate(name, j.shape, self.estimates[name], self.priority[name], j.order))

    def _unready(self, name: str) -> None:
        if name in self._ready:
            self._ready.discard(name)
            self.queue.remove(name)

    def _is_ready(self, name: str) -> bool:
        return self.states[name] == JobState.PENDING and all(
            self.states[u] == JobState.SUCCEEDED for u in self.jobs[name].needs)

    def _is_blocked(self, name: str) -> bool:
        return self.states[name] == JobState.PENDING and any(
            self.states[u] in (JobState.FAILED, JobState.SKIPPED, JobState.KILLED) for u in self.jobs[name].needs)

    def blocked(self) -> list[tuple[str, str]]:
        """Pending jobs a failed, skipped or killed need will never let run: (job, that need)."""
        out = []
        for n in sorted(self._blocked, key=lambda n: self.jobs[n].order):
            if self._is_blocked(n):
                bad = next(u for u in self.jobs[n].needs
                           if self.states[u] in (JobState.FAILED, JobState.SKIPPED, JobState.KILLED))
                out.append((n, bad))
        self._blocked.clear()
        return out

    def ready(self) -> list[str]:
        return sorted(self._ready, key=lambda n: self.jobs[n].order)

    def finished(self) -> bool:
        return all(s.is_terminal for s in self.states.values())

    # ------------------------------------------------------------------ estimates and priorities

    def reprioritise(self) -> None:
        total = self.books.capacity()
        self.priority = priorities({n: j.needs for n, j in self.jobs.items()}, self.estimates,
                                   {n: j.shape.width for n, j in self.jobs.items()}, total)
        ready = self._ready | {n for n in self.jobs if self._is_ready(n)}
        self._ready, self.queue = set(), ReadyQueue()
        for n in ready:
            self._make_ready(n)

    def expect_end(self, name: str, ends_at: float) -> None:
        h = self.holdings.get(name)
        if h is not None:
            self.holdings[name] = Holding(h.name, h.gpus, ends_at, h.share)

    # ------------------------------------------------------------------ placing

    def schedule(self, now: float) -> Pass:
        """What the policy places now; nothing is held until `hold` is called for a placement."""
        if not self._ready or (self.books.free_gpus() <= 0 and not self.books.share_room()):
            return Pass()
        out = self.policy.schedule(now, self.queue, self.books, list(self.holdings.values()))
        if self.avoid and out.placements:
            self._steer(out)
        return out

    def make_exclusive(self, name: str) -> None:
        """A packed job that outgrew its share runs on whole GPUs from now on."""
        j = self.jobs[name]
        if j.shape.packed:
            self.jobs[name] = replace(j, shape=j.shape._replace(mib=0))
            if name in self._ready:   # queued with its old shape
                self._unready(name)
                self._make_ready(name)

    def avoid_nodes(self, name: str, nodes: Iterable[str]) -> None:
        """The job's last attempt lost its node: its next placement goes elsewhere if anywhere else fits."""
        self.avoid[name] = frozenset(nodes)

    def _steer(self, out: Pass) -> None:
        """Moves a placement off the nodes its job avoids, onto others free in the same pass; where
        none fit it stays (soft: a node that came back is better than waiting for ever)."""
        free = self.books.copy()
        for p in out.placements:
            if p.gpu is None:
                free.hold(p.nodes, self.jobs[p.name].shape.gpus_per_node)
        for i, p in enumerate(out.placements):
            bad = self.avoid.get(p.name)
            if not bad or bad.isdisjoint(p.nodes) or p.gpu is not None:   # a packed job's share is not moved
                continue
            shape = self.jobs[p.name].shape
            free.hold(p.nodes, shape.gpus_per_node, -1)
            nodes = free.choose(shape, lambda n, _g: n not in bad) or p.nodes
            free.hold(nodes, shape.gpus_per_node)
            out.placements[i] = Placement(p.name, nodes)

    def hold(self, p: Placement, now: float) -> None:
        """The placement is made: the GPUs are the job's until `release`, and what it avoided is spent."""
        self.avoid.pop(p.name, None)
        shape = self.jobs[p.name].shape
        if p.gpu is not None:
            self.hold_share(p.name, Share(p.nodes[0], p.gpu, shape.mib), now + self.estimates[p.name])
            return
        self.hold_gpus(p.name, tuple((n, shape.gpus_per_node) for n in p.nodes), now + self.estimates[p.name])

    def hold_gpus(self, name: str, gpus: tuple[tuple[str, int], ...], ends_at: float) -> None:
        """Where the job's GPUs are (again: Ray may put a job elsewhere than the books proposed)."""
        self.release(name)
        self.books.hold_gpus(gpus)
        self.holdings[name] = Holding(name, gpus, ends_at)

    def hold_share(self, name: str, share: Share, ends_at: float) -> None:
        """Where a packed job's memory is (again: the GPU Ray gave it may not be the books' guess)."""
        self.release(name)
        self.books.hold_share(share.node, share.gpu, share.mib)
        self.holdings[name] = Holding(name, (), ends_at, share)

    def release(self, name: str, keep: Iterable[tuple[str, int]] = ()) -> None:
        """The job gave its GPUs back, except `keep` (leaked memory: quarantined for good)."""
        h = self.holdings.pop(name, None)
        if h is None:
            return
        self.version += 1
        kept = list(keep)
        if h.share is not None:
            self.books.hold_share(h.share.node, h.share.gpu, h.share.mib, -1)
        self.books.hold_gpus(h.gpus, -1)
        self.books.hold_gpus(kept)
        self.quarantined.extend(kept)

    def could_ever_fit(self, name: str) -> bool:
        return self.books.could_ever_fit(self.jobs[name].shape, self.quarantined)
