"""Scheduling policies: given the ready jobs, the books and what runs, which jobs start where now.

- `fifo`: plan order, first that fits (the baseline the benchmarks compare against).
- `greedy`: critical-path order, first that fits (what the driver did before reservations).
- `backfill` (default): critical-path order; the most critical ready job that does not fit gets
  the GPUs it will need reserved at the time running jobs are expected to free them, and other
  jobs start before it only when their estimated end comes first or they leave its GPUs alone
  (Slurm's EASY backfill, per node). Re-planned on every pass, so a wrong estimate costs one
  job's slack, not the schedule.

Packed jobs (a known memory need, `Shape.mib`) go where they fit tightest on a shared GPU, else
on a whole free GPU; in backfill, one that would outlive the reservation starts a shared GPU
only where the reserved job leaves one spare, and a shared GPU counts as free for the reserved
job when its last tenant is expected to end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

from launcher.scheduling.books import Allowed, Books
from launcher.scheduling.model import Candidate, Holding, Placement, Reservation, Shape, Share
from launcher.scheduling.queue import ReadyQueue


@dataclass
class Pass:
    placements: list[Placement] = field(default_factory=list)
    reservation: Reservation | None = None


class Policy(Protocol):
    name: str

    def schedule(self, now: float, ready: ReadyQueue, books: Books, running: Sequence[Holding]) -> Pass:
        """Placements to make now (`books` is not changed: the caller holds what it really places)."""
        ...


def _pack(c: Candidate, free: Books, out: Pass, allowed: Allowed | None = None) -> Share | None:
    """Place a packed job in the pass: its share held in `free`, the placement recorded."""
    spot = free.choose_share(c.shape.mib, c.shape.gpu_type, allowed)
    if spot is None:
        return None
    free.hold_share(*spot, c.shape.mib)
    out.placements.append(Placement(c.name, (spot[0],), spot[1]))
    return Share(spot[0], spot[1], c.shape.mib)


def _greedy(ready: Iterable[Candidate], books: Books, failed: set[Shape]) -> Pass:
    free, out = books.copy(), Pass()
    left = free.free_gpus()
    for c in ready:
        if left <= 0 and not free.share_room():
            break
        if c.shape in failed:
            continue
        if c.shape.packed:
            if _pack(c, free, out) is None:
                failed.add(c.shape)
            left = free.free_gpus()
            continue
        if left <= 0:
            continue
        nodes = free.choose(c.shape) if c.shape.width <= left else None
        if nodes is None:
            failed.add(c.shape)     # the books only fill up during a pass: no later job of this shape fits
            continue
        free.hold(nodes, c.shape.gpus_per_node)
        left -= c.shape.width
        out.placements.append(Placement(c.name, nodes))
    return out


class Fifo:
    name = "fifo"

    def schedule(self, now: float, ready: ReadyQueue, books: Books, running: Sequence[Holding]) -> Pass:
        return _greedy(sorted(ready.all(), key=lambda c: c.order), books, set())


class Greedy:
    name = "greedy"

    def schedule(self, now: float, ready: ReadyQueue, books: Books, running: Sequence[Holding]) -> Pass:
        failed: set[Shape] = set()
        return _greedy(ready.walk(failed), books, failed)


def reserve(c: Candidate, free: Books, running: Sequence[Holding], now: float) -> tuple[Reservation, dict[str, int]] | None:
    """When and where `c` can start if nothing new starts: per node, the time running jobs will
    have freed its GPUs; the earliest `nodes` such nodes. Also each reserved node's GPUs to spare
    at that time (what a backfilled job that outlives the reservation may still use there)."""
    gpn, kind = c.shape.gpus_per_node, c.shape.gpu_type
    releases: dict[str, list[tuple[float, int]]] = {}
    last_tenant: dict[tuple[str, str], float] = {}   # a shared GPU is whole when its last tenant ends
    for h in running:
        t = h.ends_at if h.ends_at > now else now
        if h.share is not None:
            key = (h.share.node, h.share.gpu)
            last_tenant[key] = max(last_tenant.get(key, t), t)
        for n, g in h.gpus:
            if free.free[n] < gpn:          # a node that already fits needs no timeline
                releases.setdefault(n, []).append((t, g))
    for (n, _gpu), t in last_tenant.items():
        if free.free[n] < gpn:
            releases.setdefault(n, []).append((t, 1))
    ready_at: list[tuple[float, str]] = []
    for n, have in free.free.items():
        if free.capacity_of[n] < gpn or (kind is not None and not free.matches(n, kind)):
            continue
        when = now
        if have < gpn:
            for t, g in sorted(releases.get(n, ())):
                have, when = have + g, t
                if have >= gpn:
                    break
        if have >= gpn:
            ready_at.append((when, n))
    if len(ready_at) < c.shape.nodes:
        return None
    chosen = sorted(ready_at)[: c.shape.nodes]
    at = chosen[-1][0]
    spare = {n: free.free[n] + sum(g for t, g in releases.get(n, ()) if t <= at) - gpn for _, n in chosen}
    return Reservation(c.name, at, tuple(n for _, n in chosen)), spare


class Backfill:
    name = "backfill"
    # Candidates looked at behind a reservation per pass (Slurm's bf_max_job_test): the ready list of a
    # 10,000-job plan is thousands long, and the ones far down rarely fit where the top ones did not.
    max_backfill_tests = 256

    def schedule(self, now: float, ready: ReadyQueue, books: Books, running: Sequence[Holding]) -> Pass:
        free, out = books.copy(), Pass()
        left = free.free_gpus()
        held = list(running)
        spare: dict[str, int] = {}
        failed: set[tuple[Shape, bool]] = set()
        dead: set[Shape] = set()          # shapes that fit nowhere now, even for a job that ends in time
        blocked: Candidate | None = None  # the most critical job that does not fit: reserved for, lazily
        tried = False                     # ... once per pass, when a job behind it first fits
        tests = 0
        fit: dict[Shape, tuple[str, ...] | None] = {}
        allowed = lambda n, g: n not in spare or spare[n] >= g   # noqa: E731 - the reservation's veto
        for c in ready.walk(dead):
            if (left <= 0 and not free.share_room()) or tests > self.max_backfill_tests:
                break
            if blocked is not None:
                tests += 1
            if c.shape.packed:
                r = out.reservation
                long = r is not None and now + c.estimate_s > r.at
                share = _pack(c, free, out, allowed if long else None)
                if share is None:
                    dead.add(c.shape)
                    continue
                if share.node in spare and free.free_gpus() < left:   # it took a whole GPU there
                    spare[share.node] -= 1
                left = free.free_gpus()
                held.append(Holding(c.name, (), now + c.estimate_s, share))
                fit.clear()
                continue
            if c.shape.width > left:
                dead.add(c.shape)
                blocked = blocked or c
                continue
            r = out.reservation
            long = r is not None and now + c.estimate_s > r.at
            if long and (c.shape, False) in failed:
                continue
            if c.shape not in fit:     # the books change only when a job is placed: one look per shape
                fit[c.shape] = free.choose(c.shape)
            nodes = fit[c.shape]
            if nodes is None:
                dead.add(c.shape)
                blocked = blocked or c
                continue
            if blocked is not None:
                # It fits now, behind a job that does not: only if it leaves that job's start alone.
                if not tried:
                    tried = True
                    got = reserve(blocked, free, held, now)
                    if got is not None:   # None: it can never fit, there is nothing to protect
                        out.reservation, kept = got
                        spare.update(kept)
                r = out.reservation
                if r is not None and now + c.estimate_s > r.at:
                    if (c.shape, False) in failed:
                        continue
                    nodes = free.choose(c.shape, allowed)
                    if nodes is None:
                        failed.add((c.shape, False))
                        continue
                    for n in nodes:
                        if n in spare:
                            spare[n] -= c.shape.gpus_per_node
            free.hold(nodes, c.shape.gpus_per_node)
            fit.clear()
            left -= c.shape.width
            held.append(Holding(c.name, tuple((n, c.shape.gpus_per_node) for n in nodes), now + c.estimate_s))
            out.placements.append(Placement(c.name, nodes))
        return out


POLICIES: dict[str, type[Fifo] | type[Greedy] | type[Backfill]] = {"backfill": Backfill, "greedy": Greedy, "fifo": Fifo}
# --order on the command line: critical-path is the default policy's old name, kept for scripts.
ALIASES = {"critical-path": "backfill"}


def make(name: str) -> Policy:
    return POLICIES[ALIASES.get(name, name)]()


def names() -> tuple[str, ...]:
    return (*POLICIES, *ALIASES)


__all__ = ["Pass", "Policy", "Fifo", "Greedy", "Backfill", "make", "names", "reserve"]
