"""The executor that runs jobs on Ray: placement groups hold the GPUs, node hosts run the ranks.

The controller gives orders and reads events (launcher/control/executor.py); everything that waits
on Ray lives here. Nothing blocks the controller: placement groups, bundle reads, spawns and polls
are references looked at without waiting, releases run in worker threads, and `wait` sleeps on
all of them at once (`ray.wait`), so an end seen, a release over, a placement ready are followed
at once instead of at the next tick.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from launcher import teardown
from launcher.control import membership
from launcher.control.executor import (AttemptFailed, Event, NodesChanged, ReleaseDone, ReleaseOrder, Reported,
                                       Reserved, ReserveOrder, Spawned, StartOrder)
from launcher.resources import ClusterShape
from launcher.node.host import GroupHandle, bundle_info
from launcher.node.messages import AgentReport, BundleInfo, Released, Started
from launcher.node.pool import HostPool
from launcher.supervision.failure import Verdict

log = logging.getLogger("launcher")
POLL_S = 0.25         # a poll answers in milliseconds: paced, as the heartbeats change no faster
EXIT_WAIT_S = 30.0    # one wait_exit call per node and attempt at a time, renewed when it times out
RPC_TIMEOUT_S = teardown.RPC_TIMEOUT_S
MEMBERSHIP_S = 2.0    # how often the node table is read: a node that joins is offered within this
Key = tuple[str, int]   # (job, attempt)


def _cause(e: BaseException) -> str:
    """What went wrong inside a Ray task, in one line: its original exception, not the remote traceback."""
    cause = getattr(e, "cause", None) or e
    return f"{type(cause).__name__}: {cause}"[:600]


@dataclass(frozen=True)
class SparePg:
    """A placement group whose job ended and whose GPUs were verified free: reused as it is by the
    next placement of the same bundles on the same nodes, removed after the pass otherwise. Ray
    retries a placement group that was created right after another was removed about a second
    later; a reused one is ready at once, and the GPUs never leave this run's reservation."""
    pg: PlacementGroup
    key: tuple[Any, ...]
    nodes: tuple[str, ...]


@dataclass
class _Live:
    """One attempt as Ray sees it, from its reservation to its release."""
    order: ReserveOrder
    pg: PlacementGroup
    key: tuple[Any, ...]
    reused: bool
    ready_ref: Any = None             # pg.ready() once: each call schedules a new task in the group
    info_refs: list[Any] = field(default_factory=list)   # bundle_info per bundle: its node and GPU ids
    info_sent: float = 0.0
    reserved: bool = False            # Reserved was sent: waiting for the controller's start
    start_refs: list[Any] = field(default_factory=list)
    start_issued: float = 0.0
    agents: list[GroupHandle] = field(default_factory=list)
    nodes: tuple[str, ...] = ()       # where the ranks run (from the hosts' replies)
    running: bool = False
    poll_refs: list[Any] | None = None
    poll_sent: float = 0.0
    exit_refs: list[Any] = field(default_factory=list)   # resolve when a rank exits (or after EXIT_WAIT_S)


@dataclass
class _Stopping:
    live: _Live
    order: ReleaseOrder
    future: Future[Released]


class RayExecutor:
    def __init__(self, run_id: str, shape: ClusterShape, read_shape: Callable[[], ClusterShape]):
        """`shape`: the nodes the controller's books start from; `read_shape`: Ray's node table now
        (read every MEMBERSHIP_S, so nodes that join or leave during the run reach the books)."""
        self.run_id = run_id
        self.known = membership.gpu_nodes(shape)
        self.read_shape, self.looked = read_shape, time.time()
        self.live: dict[Key, _Live] = {}
        self.stopping: dict[Key, _Stopping] = {}
        self.spare: list[SparePg] = []
        self.queued: list[Event] = []     # events found while giving an order (a start that failed at once)
        self.woken = threading.Event()
        self.releases = ThreadPoolExecutor(max_workers=8, thread_name_prefix="release")
        self.hosts = HostPool(run_id)
        self.hosts.start(self.known)

    # ------------------------------------------------------------------ orders

    def reserve(self, o: ReserveOrder) -> None:
        s = o.shape
        bundle: dict[str, float] = {"GPU": o.gpu_fraction or float(s.gpus_per_node)}
        if o.cpus_per_node:
            bundle["CPU"] = o.cpus_per_node
        if s.gpu_type:
            bundle[f"accelerator_type:{s.gpu_type}"] = 0.001
        strategy = "STRICT_PACK" if s.nodes == 1 else "STRICT_SPREAD"
        key = (tuple(sorted(bundle.items())), strategy, s.nodes)
        spare = next((sp for sp in self.spare if sp.key == key and sorted(sp.nodes) == sorted(o.nodes)), None)
        if spare is not None:
            self.spare.remove(spare)
            pg = spare.pg
        else:
            pg = placement_group([dict(bundle) for _ in range(s.nodes)], strategy=strategy,
                                 name=f"{self.run_id}/{o.job}/{o.attempt}",
                                 _soft_target_node_id=o.nodes[0] if s.nodes == 1 and o.nodes else None)
        self.live[(o.job, o.attempt)] = _Live(o, pg, key, reused=spare is not None)

    def start(self, o: StartOrder) -> None:
        lv = self.live.get((o.job, o.attempt))
        if lv is None:
            return
        b0 = o.bundles[0]
        try:
            master: tuple[str | None, int | None] = (None, None)   # single node: the host picks its own
            if len(o.bundles) > 1:   # rank 0's node publishes MASTER_ADDR and a free port to the others
                port = ray.get(self.hosts.host(b0.node).free_port.remote(), timeout=RPC_TIMEOUT_S)
                master = (b0.ip, port)
            g = o.ranks_per_node
            for i, b in enumerate(o.bundles):
                h = GroupHandle(self.hosts.host(b.node), f"{o.job}/{o.attempt}/node{i}")
                lv.agents.append(h)
                lv.start_refs.append(h.host.start.remote(
                    h.key, o.job, o.attempt, i, list(range(i * g, (i + 1) * g)), o.world_size, str(o.job_root), b,
                    str(o.job_file), master[0], master[1], o.env))
        except (RayError, GetTimeoutError) as e:
            self.queued.append(AttemptFailed(o.job, o.attempt, Verdict.LOST, f"node host failed at start: {e}"))
            return
        lv.start_issued = time.time()

    def release(self, o: ReleaseOrder) -> None:
        key = (o.job, o.attempt)
        if key in self.stopping:   # already on its way: it answers once
            return
        lv = self.live.pop(key, None)
        if lv is None:   # never reserved (its reservation failed): nothing to stop, but an answer all the same
            self.queued.append(ReleaseDone(o.job, o.attempt, Released()))
            return
        future = self.releases.submit(teardown.release, self.run_id, list(lv.agents), None if o.keep else lv.pg,
                                      o.grace, o.dump_stacks, dict(o.sweeps or {}), o.verify)
        future.add_done_callback(lambda _f: self.woken.set())
        self.stopping[key] = _Stopping(lv, o, future)

    def end_pass(self) -> None:
        for sp in self.spare:   # not taken by this pass: other runs and users may have the GPUs
            remove_placement_group(sp.pg)
        self.spare.clear()

    def wake(self) -> None:
        self.woken.set()

    def close(self) -> None:
        self.releases.shutdown(wait=False)
        self.end_pass()
        self.hosts.shutdown()

    # ------------------------------------------------------------------ events

    def wait(self, until: float) -> list[Event]:
        while True:
            events = self._collect()
            if events or self.woken.is_set() or time.time() >= until:
                self.woken.clear()
                return events
            refs = self._pending_refs()
            due = min([until, *(lv.poll_sent + POLL_S for lv in self.live.values()
                                if lv.running and lv.poll_refs is None)])
            # Look again only when something resolved, a release ended (woken) or a poll is due: a
            # look at every slice would ask Ray about every live attempt 20 times a second.
            while not self.woken.is_set() and (left := due - time.time()) > 0:
                if refs:   # in slices: a release ends in a worker thread, not as a Ray reference
                    if ray.wait(refs, num_returns=1, timeout=min(left, 0.05))[0]:
                        break
                else:
                    self.woken.wait(min(left, 0.05))

    def _pending_refs(self) -> list[Any]:
        refs: list[Any] = []
        for lv in self.live.values():
            if lv.running:
                refs += lv.exit_refs + (lv.poll_refs or [])
            elif lv.start_refs:
                refs += lv.start_refs
            elif not lv.reserved:
                refs += lv.info_refs or ([lv.ready_ref] if lv.ready_ref is not None else [])
        if refs:   # only what has not resolved yet: one already resolved would end every wait at once
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=0)
        return refs

    def _collect(self) -> list[Event]:
        events, self.queued = self.queued, []
        for key, lv in list(self.live.items()):
            try:
                ev = self._look(lv)
            except (RayError, GetTimeoutError) as e:   # a Ray call of the look itself: the attempt cannot be watched
                ev = AttemptFailed(*key, Verdict.LOST, f"node host failed: {_cause(e)}")
            if ev is not None:
                events.append(ev)
        for key, st in list(self.stopping.items()):
            if st.future.done():
                del self.stopping[key]
                events.append(ReleaseDone(*key, self._released(st)))
        if time.time() - self.looked >= MEMBERSHIP_S:
            changed = self._membership()
            if changed is not None:
                events.append(changed)
        return events

    def _membership(self) -> NodesChanged | None:
        """Nodes that joined get a host at once (their first job does not wait for a Python to
        start); a node that left keeps no handle (its jobs learn of it from their own calls)."""
        self.looked = time.time()
        try:
            changed = membership.compare(self.known, self.read_shape())
        except Exception as e:  # noqa: BLE001 - the GCS did not answer this time (RayError, gRPC): look again
            log.warning("could not read the node table: %s", _cause(e))
            return None
        if changed is None:
            return None
        for n in changed.joined:
            self.known[n.node_id] = n
            self.hosts.host(n.node_id)
        for n in changed.left:
            del self.known[n.node_id]
            self.hosts.forget(n.node_id)
        return changed

    def _look(self, lv: _Live) -> Event | None:
        if lv.running:
            return self._poll(lv)
        if lv.start_refs:
            return self._check_started(lv)
        if not lv.reserved:
            return self._check_reserved(lv)
        return None

    def _check_reserved(self, lv: _Live) -> Event | None:
        o = lv.order
        if lv.ready_ref is None and not lv.reused:
            lv.ready_ref = lv.pg.ready()
        if not lv.info_refs:
            if not lv.reused and not ray.wait([lv.ready_ref], timeout=0)[0]:
                return None
            # Which node and GPU ids each bundle got: a zero-CPU task inside it, on a pre-started worker.
            lv.info_refs = [bundle_info.options(num_gpus=o.gpu_fraction or o.shape.gpus_per_node,
                                                scheduling_strategy=PlacementGroupSchedulingStrategy(
                                                    placement_group=lv.pg, placement_group_bundle_index=i)).remote()
                            for i in range(o.shape.nodes)]
            lv.info_sent = time.time()
        done, _ = ray.wait(lv.info_refs, num_returns=len(lv.info_refs), timeout=0)
        if len(done) < len(lv.info_refs):
            if time.time() - lv.info_sent > RPC_TIMEOUT_S:
                return AttemptFailed(o.job, o.attempt, Verdict.LOST,
                                     f"the GPUs of the placement group could not be read in {RPC_TIMEOUT_S:.0f}s")
            return None
        try:
            bundles: list[BundleInfo] = ray.get(lv.info_refs)
        except RayError as e:
            return AttemptFailed(o.job, o.attempt, Verdict.LOST, f"the placement group's bundles did not answer: {_cause(e)}")
        lv.reserved = True
        return Reserved(o.job, o.attempt, tuple(bundles))

    def _check_started(self, lv: _Live) -> Event | None:
        o = lv.order
        done, _ = ray.wait(lv.start_refs, num_returns=len(lv.start_refs), timeout=0)
        if len(done) < len(lv.start_refs):
            # From when the spawn was asked for: however long the placement waited is not the hosts' fault.
            if time.time() - lv.start_issued > RPC_TIMEOUT_S * 2:
                return AttemptFailed(o.job, o.attempt, Verdict.LOST, "agents did not start the ranks in time")
            return None
        try:
            replies: list[Started] = ray.get(lv.start_refs)
        except RayActorError as e:
            self._hosts_lost(lv, lv.start_refs)
            return AttemptFailed(o.job, o.attempt, Verdict.LOST, f"agent failed at start: {e}")
        except RayError as e:   # the spawn itself failed (OSError in the host: no such file, fork limits)
            return AttemptFailed(o.job, o.attempt, Verdict.CRASH, f"ranks could not be started: {_cause(e)}")
        lv.start_refs, lv.running = [], True
        lv.nodes = tuple(r.bundle.node for r in replies)
        lv.exit_refs = [ag.call("wait_exit", EXIT_WAIT_S) for ag in lv.agents]
        return Spawned(o.job, o.attempt, tuple(replies))

    def _poll(self, lv: _Live) -> Event | None:
        """Ask the hosts, and report once all of them answered: never waited on, so one slow node
        delays only its own job (and counts as lost after the RPC timeout)."""
        o = lv.order
        if lv.poll_refs is None:
            exited = ray.wait(lv.exit_refs, num_returns=len(lv.exit_refs), timeout=0)[0] if lv.exit_refs else []
            if exited:   # a rank exited (or a wait ran out): look now, and wait again
                lv.exit_refs = [ag.call("wait_exit", EXIT_WAIT_S) for ag in lv.agents]
            if exited or time.time() - lv.poll_sent >= POLL_S:
                lv.poll_refs, lv.poll_sent = [ag.call("poll") for ag in lv.agents], time.time()
            return None
        done, _ = ray.wait(lv.poll_refs, num_returns=len(lv.poll_refs), timeout=0)
        if len(done) < len(lv.poll_refs):
            if time.time() - lv.poll_sent > RPC_TIMEOUT_S:
                return AttemptFailed(o.job, o.attempt, Verdict.LOST, f"node agent did not answer in {RPC_TIMEOUT_S:.0f}s")
            return None
        refs, lv.poll_refs = lv.poll_refs, None
        try:
            reports: list[AgentReport] = ray.get(refs)
        except RayActorError as e:
            self._hosts_lost(lv, refs)
            return AttemptFailed(o.job, o.attempt, Verdict.LOST, f"node agent lost: {type(e).__name__}")
        except RayError as e:   # the host is there but its poll raised: this attempt cannot be watched
            return AttemptFailed(o.job, o.attempt, Verdict.LOST, f"node agent failed to report: {_cause(e)}")
        return Reported(o.job, o.attempt, tuple(reports))

    def _hosts_lost(self, lv: _Live, refs: list[Any]) -> None:
        """Which of the attempt's hosts died (all its refs are resolved): the next job there gets a new one."""
        for g, ref in zip(lv.agents, refs):
            try:
                ray.get(ref, timeout=0)
            except RayActorError:
                self.hosts.lost(g.host)
            except (RayError, GetTimeoutError):
                pass

    def _released(self, st: _Stopping) -> Released:
        try:
            res = st.future.result()
        except Exception as e:  # noqa: BLE001 - the controller must still put its books and journal right
            res = Released(notes=[f"the release failed: {type(e).__name__}: {e}"])
        if st.order.keep:   # GPUs verified free: the next job of this shape there takes the reservation as it is
            if res.unreleased or not st.live.nodes:
                remove_placement_group(st.live.pg)
            else:
                self.spare.append(SparePg(st.live.pg, st.live.key, st.live.nodes))
        return res
