"""The driver: runs a validated plan on Ray and keeps the journal.

Jobs whose needs succeeded get a placement group (one bundle per node), one NodeAgent per
bundle spawns the ranks, and the supervisor's verdicts decide finish / restart / fail.
Only this process writes run.db.

The loop never waits on one job: agent polls are collected as they arrive, releases (py-spy,
TERM grace, GPU memory) run in worker threads, and an unexpected error in one job's handling
fails that job, not the run.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from launcher import checkpoints, dsconfig, monitor, rundir, teardown
from launcher.node.messages import AgentReport, BundleInfo, Started
from launcher.node.host import GroupHandle, bundle_info
from launcher.node.pool import HostPool
from launcher.contract.result import read_result
from launcher.journal import Decision, Journal, JournalError, ProcessRecord
from launcher.layout import RunDir
from launcher.plan import Plan
from launcher.raymetrics import ProgressMetrics
from launcher.resources import ClusterShape
from launcher.control import requests as control
from launcher.control.core import Core, JobNeeds
from launcher.control.records import Attempt, JobRun, SparePg, Stopping
from launcher.control.states import JobState
from launcher.scheduling import estimates
from launcher.scheduling.books import Books
from launcher.scheduling.model import Placement, Shape
from launcher.scheduling.policy import make as make_policy
from launcher.supervision.failure import Verdict
from launcher.supervision.policy import BatchChange, FailurePolicy, History, checkpoint_suspect
from launcher.supervision.watch import LEARNED_PHASES, AttemptWatch, Observation

log = logging.getLogger("launcher")
POLL_S = 0.25
EXIT_WAIT_S = 30.0   # one wait_exit call per node and attempt at a time, renewed when it times out
RPC_TIMEOUT_S = teardown.RPC_TIMEOUT_S
FINAL = tuple(s for s in JobState if s.is_terminal)
LIVE = (JobState.PLACING, JobState.STARTING, JobState.RUNNING)   # an attempt that has not begun its release


def _cause(e: BaseException) -> str:
    """What went wrong inside a Ray task, in one line: its original exception, not the remote traceback."""
    cause = getattr(e, "cause", None) or e
    return f"{type(cause).__name__}: {cause}"[:600]


class Driver:
    def __init__(self, plan: Plan, rd: RunDir, journal: Journal, env: dict[str, dict[str, str]], shape: ClusterShape,
                 policy: str = "critical-path"):
        self.plan, self.rd, self.journal, self.env, self.shape = plan, rd, journal, env, shape
        self.quarantined: list[dict[str, Any]] = []   # placements whose GPU memory never came back
        self.last_wait_note = 0.0
        self.run_id = rd.root.name
        self.metrics = ProgressMetrics(self.run_id)
        self.core = self._make_core(policy)
        self.jobs = {name: JobRun(job, self.core) for name, job in plan.jobs.items()}
        self._load_history()
        self.stop_requested = threading.Event()
        self.wake = threading.Event()   # set when a release finishes (a worker thread's event)
        self.releases = ThreadPoolExecutor(max_workers=8, thread_name_prefix="release")
        self.planned_version = -1
        self.spare_pgs: list[SparePg] = []
        self.hosts = HostPool(self.run_id)
        self.hosts.start(n.node_id for n in shape.nodes if n.gpus > 0)
        rundir.make_reserve(rd)

    def _make_core(self, policy: str) -> Core:
        """The scheduling core, with durations from earlier runs of the same jobs where there are any."""
        history = estimates.durations_from_journals(estimates.past_journals(self.rd.root.parent, exclude=self.rd.root))
        needs = []
        for i, (name, job) in enumerate(self.plan.jobs.items()):
            r, est = job.config.resources, estimates.initial(job, history)
            needs.append(JobNeeds(name, job.needs, Shape(r.nodes, r.gpus_per_node, r.gpu_type), i, est.seconds))
            if est.source == "history":
                log.info("%s: estimated %.0fs from earlier runs", name, est.seconds)
        done = {r["name"]: JobState.SUCCEEDED for r in self.journal.jobs() if r["state"] == "succeeded"}
        books = Books.of((n.node_id, n.gpus, n.gpu_type) for n in self.shape.nodes)
        return Core(needs, books, make_policy(policy), initial=done)

    def _load_history(self) -> None:
        """Continue a run from its journal (bin/resume): finished jobs stay finished; the rest start
        again from their newest complete checkpoint, attempt numbers going on from the last one."""
        rows = {r["name"]: r for r in self.journal.jobs()}
        for name, jr in self.jobs.items():
            row = rows.get(name)
            if row is None:
                continue
            if row["state"] == "succeeded":
                pass   # the core starts it succeeded (see _make_core)
            elif row["state"] != "pending":
                self.journal.set_job(name, state="pending", reason="resumed")
            for a in self.journal.attempts(name):
                if a["ended"] is None:  # the driver died under this attempt
                    self.journal.end_attempt(name, a["n"], "failed", "lost", {}, row["step"],
                                             detail="the driver stopped while this attempt ran")
            jr.attempts = max((a["n"] for a in self.journal.attempts(name)), default=0)
            jr.last_ckpt_step = max((c["step"] for c in self.journal.checkpoints(name) if c["complete"]), default=-1)
            for d in self.journal.decisions(name):   # replayed in order: the last micro-batch wins
                if d.kind == "micro_batch":
                    self._set_micro_batch(jr, d.data["batch_size"], d.data["grad_accum"])
                elif d.kind == "bad_checkpoint":
                    jr.bad_checkpoints[Path(d.data["path"])] = d.data.get("identity", "")
                elif d.kind == "timeout":
                    phase = d.data["phase"]
                    jr.learned[phase] = max(d.data["seconds"], jr.learned.get(phase, 0.0))

    # ------------------------------------------------------------------ main loop

    def run(self) -> str:
        self._install_signal_handlers()
        self.journal.set_run(state="running")
        try:
            while not self._finished():
                if self.stop_requested.is_set():
                    self._kill_all("the driver was asked to stop")
                    break
                if self._handle_requests():
                    break
                self._skip_blocked()
                self._place_ready()    # as many ready jobs as the policy starts now
                for jr in self.jobs.values():
                    self._isolated(jr, self._step_job)
                self._wait_for_events()
        except JournalError as e:
            return self._journal_failed(e)
        except BaseException:
            self._kill_all("the driver crashed")
            raise
        finally:
            self.releases.shutdown(wait=False)
            self._drop_spare_pgs()
            self.hosts.shutdown()
        rundir.free_reserve(self.rd)
        states = {jr.state for jr in self.jobs.values()}
        final = "succeeded" if states == {"succeeded"} else ("killed" if "killed" in states else "failed")
        self.journal.set_run(state=final, ended=time.time())
        self.journal.event("run", f"run {final}")
        return final

    def _wait_for_events(self) -> None:
        """Until something happens: a Ray reference the loop waits on resolves (a placement group
        ready, ranks spawned, an agent's poll answered), a release ends, or the next poll is due.
        What took a 0.25 s tick per step (end seen, released, placed, started) now follows at once."""
        now = time.time()
        refs: list[Any] = []
        due = now + POLL_S
        for jr in self.jobs.values():
            a = jr.current
            if a is None or a.ended:
                continue
            if jr.state == JobState.PLACING:
                refs.extend(a.info_refs or ([a.ready_ref] if a.ready_ref is not None else []))
            elif jr.state == JobState.STARTING:
                refs.extend(a.start_refs)
            elif jr.state == JobState.RUNNING:
                refs.extend(a.exit_refs)
                if a.poll_refs:
                    refs.extend(a.poll_refs)
                else:
                    due = min(due, a.poll_sent + POLL_S)
            elif jr.state == JobState.WAITING:
                due = min(due, jr.retry_at)
        deadline = max(now, due)
        if self.core.version != self.planned_version:   # a job ended or came back: place at once
            deadline = now
        if refs:   # only what has not resolved yet: one already resolved would end every wait at once
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=0)
        while not self.wake.is_set() and not self.stop_requested.is_set():
            left = deadline - time.time()
            if left <= 0:
                break
            if refs:   # in slices: a release ends in a worker thread, not as a Ray reference
                if ray.wait(refs, num_returns=1, timeout=min(left, 0.05))[0]:
                    break
            else:
                self.wake.wait(min(left, 0.05))
        self.wake.clear()

    def _step_job(self, jr: JobRun) -> None:
        if jr.state == JobState.PLACING:
            self._maybe_start(jr)
        elif jr.state == JobState.STARTING:
            self._check_started(jr)
        elif jr.state == JobState.RUNNING:
            self._poll(jr)
        elif jr.state == JobState.STOPPING:
            self._check_stopping(jr)
        elif jr.state == JobState.WAITING and time.time() >= jr.retry_at:
            jr.state = JobState.PENDING

    def _isolated(self, jr: JobRun, action: Callable[[JobRun], Any]) -> Any:
        """One job's unexpected error (a launcher bug, a file it cannot read) fails that job and
        the run goes on; only a journal that cannot be written stops the run."""
        try:
            return action(jr)
        except JournalError:
            raise
        except Exception as e:  # noqa: BLE001 - anything, by design: the other jobs must not pay for it
            log.error("%s: launcher error", jr.job.name, exc_info=e)
            self._job_fault(jr, f"launcher error: {type(e).__name__}: {e}"[:600] + " (the driver log has the traceback)")
            return None

    def _job_fault(self, jr: JobRun, reason: str) -> None:
        jr.kill_reason = None
        if jr.stopping is not None and not jr.stopping.future.done():
            jr.stopping.then = lambda _res: self._end_job(jr, "failed", reason, failure="crash")
            return
        jr.stopping = None
        if jr.current is not None and not jr.current.ended and jr.state.holds_gpus:
            self._begin_release(jr, grace=2.0, dump_stacks=False,
                                then=lambda _res: self._end_job(jr, "failed", reason, failure="crash"))
            return
        self._end_job(jr, "failed", reason, failure="crash")

    def _journal_failed(self, e: JournalError) -> str:
        """The journal cannot be written (disk full, most often): stop every rank first (that needs
        no journal, and frees what they would write), then give back the space reserved at the
        start and close the journal consistently: the run and its jobs end failed, with why."""
        log.error("the journal cannot be written: %s; stopping the run", e)
        futures = [self.releases.submit(teardown.release, self.run_id, list(jr.current.agents), jr.current.pg, 2.0,
                                        False, {})
                   for jr in self.jobs.values()
                   if jr.current is not None and not jr.current.ended and jr.state in LIVE]
        for jr in self.jobs.values():
            if jr.stopping is not None:
                futures.append(jr.stopping.future)
        for f in futures:
            try:
                f.result(timeout=teardown.RPC_TIMEOUT_S + 130)
            except Exception as err:  # noqa: BLE001 - best effort: the journal below must still be closed
                log.warning("release failed while stopping the run: %s", err)
        rundir.free_reserve(self.rd)
        why = f"the journal could not be written ({e}); free space and bin/resume {self.run_id}"
        try:
            for jr in self.jobs.values():
                a = jr.current
                if a is not None and a.recorded and not a.ended:
                    self.journal.end_attempt(jr.job.name, a.n, "failed", "lost", {}, a.step, detail=why)
                if jr.state not in FINAL:
                    self.journal.set_job(jr.job.name, state="failed", reason=why)
            self.journal.set_run(state="failed", ended=time.time())
            self.journal.event("run", f"run failed: {why}")
        except JournalError as again:
            log.error("the journal still cannot be written (%s): bin/status will show the driver gone", again)
        return "failed"

    def _handle_requests(self) -> bool:
        """bin/kill requests; True when the whole run was killed."""
        for path, req in control.pending(self.rd.root):
            path.unlink(missing_ok=True)
            grace = 0.0 if req.force else 10.0
            if req.job is None:
                self._kill_all(f"killed by {req.by}" + (" (forced)" if req.force else ""), grace)
                return True
            jr = self.jobs.get(req.job)
            if jr is None or jr.state in FINAL:
                self._say(f"kill request for {req.job}: nothing to kill", req.job)
                continue
            self._isolated(jr, lambda j: self._kill_job(j, f"killed by {req.by}" + (" (forced)" if req.force else ""),
                                                        grace))
        return False

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop_requested.set())

    def _finished(self) -> bool:
        return all(jr.state in FINAL for jr in self.jobs.values())

    def _say(self, msg: str, job: str | None = None, kind: str = "info", **data: Any) -> None:
        log.info("%s%s", f"{job}: " if job else "", msg)
        self.journal.event(kind, msg, job=job, **data)

    # ------------------------------------------------------------------ scheduling

    def _skip_blocked(self) -> None:
        while blocked := self.core.blocked():   # a skipped job may block its own dependants
            for name, bad in blocked:
                jr = self.jobs[name]
                jr.state = JobState.SKIPPED
                reason = f"needs {bad}, which {self.jobs[bad].state}"
                self.journal.set_job(name, state="skipped", reason=reason)
                self._say(f"skipped: {reason}", name)

    def _place_ready(self) -> None:
        """What the scheduling policy places now, with GPUs held in our books on the nodes it chose.

        Ray is asked only when our own books say the job fits: a placement group that must wait
        is retried by Ray with a growing back-off (minutes), long after the GPUs came free.
        """
        now = time.time()
        self.planned_version = self.core.version
        planned = self.core.schedule(now)
        for p in planned.placements:
            self._isolated(self.jobs[p.name], lambda jr: self._place(jr, p, now))   # placed, or failed
        self._drop_spare_pgs()   # not taken by this pass: other runs and users may have the GPUs
        if planned.placements:
            return
        ready = self.core.ready()
        for n in ready if self.quarantined else []:
            if not self.core.could_ever_fit(n):
                self._fail_unplaceable(self.jobs[n])
        if ready and now - self.last_wait_note > 30:
            self.last_wait_note = now
            r = planned.reservation
            held = f"; {r.name} has GPUs reserved from {r.at - now:.0f}s from now" if r else ""
            log.info("waiting for GPUs: %s ready, %d GPU(s) free%s", ", ".join(ready), self.core.books.free_gpus(), held)

    def _place(self, jr: JobRun, p: Placement, now: float) -> None:
        r = jr.job.config.resources
        bundle: dict[str, float] = {"GPU": float(r.gpus_per_node)}
        if r.cpus_per_rank:
            bundle["CPU"] = r.cpus_per_rank * r.gpus_per_node
        if r.gpu_type:
            bundle[f"accelerator_type:{r.gpu_type}"] = 0.001
        strategy = "STRICT_PACK" if r.nodes == 1 else "STRICT_SPREAD"
        key = (tuple(sorted(bundle.items())), strategy, r.nodes)
        spare = next((sp for sp in self.spare_pgs if sp.key == key and sorted(sp.nodes) == sorted(p.nodes)), None)
        if spare is not None:
            self.spare_pgs.remove(spare)
            pg = spare.pg
        else:
            pg = placement_group([dict(bundle) for _ in range(r.nodes)], strategy=strategy,
                                 name=f"{self.run_id}/{jr.job.name}/{jr.attempts + 1}",
                                 _soft_target_node_id=p.nodes[0] if r.nodes == 1 else None)
        jr.attempts += 1
        jr.current = Attempt(n=jr.attempts, pg=pg, held=[{"node": n, "gpus": [""] * r.gpus_per_node} for n in p.nodes],
                             bundle_key=key, reused=spare is not None)
        self.core.hold(p, now)
        jr.first_step = None
        jr.state = JobState.PLACING
        self._say(f"waiting for {r.nodes} x {r.gpus_per_node} GPU(s){' ' + r.gpu_type if r.gpu_type else ''} "
                  f"(attempt {jr.attempts})", jr.job.name)

    def _drop_spare_pgs(self) -> None:
        for sp in self.spare_pgs:
            remove_placement_group(sp.pg)
        self.spare_pgs.clear()

    def _fail_unplaceable(self, jr: JobRun) -> None:
        """Rather than wait forever: the GPUs this job needs are held by memory an earlier job leaked."""
        reason = (f"can no longer be placed: GPUs {[q['gpus'] for q in self.quarantined]} kept out of scheduling "
                  "because their memory was not released (see bin/logs and the 'release' events; free them and "
                  "bin/resume the run)")
        self._end_job(jr, "failed", reason)

    def _maybe_start(self, jr: JobRun) -> None:
        """Placement group ready: create the agents and ask them to spawn the ranks (not waited on)."""
        a = jr.current
        assert a is not None
        if a.ready_ref is None and not a.reused:
            a.ready_ref = a.pg.ready()
        job, r = jr.job, jr.job.config.resources
        if not a.info_refs:
            if not a.reused and not ray.wait([a.ready_ref], timeout=0)[0]:
                return
            # Which node and GPU ids each bundle got: a zero-CPU task inside it, on a pre-started worker.
            a.info_refs = [bundle_info.options(num_gpus=r.gpus_per_node, scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=a.pg, placement_group_bundle_index=i)).remote() for i in range(r.nodes)]
            a.info_sent = time.time()
        done, _ = ray.wait(a.info_refs, num_returns=len(a.info_refs), timeout=0)
        if len(done) < len(a.info_refs):
            if time.time() - a.info_sent > RPC_TIMEOUT_S:
                self._attempt_failed(jr, Observation("lost", detail="the GPUs of the placement group could not be "
                                                                    f"read in {RPC_TIMEOUT_S:.0f}s"))
            return
        try:
            bundles: list[BundleInfo] = ray.get(a.info_refs)
        except RayError as e:
            self._attempt_failed(jr, Observation("lost", detail=f"the placement group's bundles did not answer: {_cause(e)}"))
            return
        still_bad = {p for p, ident in jr.bad_checkpoints.items() if checkpoints.identity(p) in (ident, "")}
        resume, rejected = checkpoints.newest_usable(self.rd.job(job.name).checkpoints, still_bad)
        for path, why in rejected:
            self._bad_checkpoint(jr, path)
            self._say(f"checkpoint {path.name} is unusable ({why}); falling back to an older one", job.name,
                      kind="checkpoint")
        a.resumed_from = str(resume) if resume else None
        a.start_step = (checkpoints.step_of(resume) or 0) if resume else 0
        a.watch = AttemptWatch(job.config.hang, learned=jr.learned)
        # The row exists from here on: whatever happens to the start, the attempt is on record.
        self.journal.start_attempt(job.name, a.n, [], a.resumed_from, a.start_step, jr.changes or None, state="starting")
        a.recorded = True
        jr.changes = {}
        path = rundir.write_job_file(rundir.job_file(self.plan, job, self.rd, a.n, a.resumed_from), self.rd)
        # Ray gives an actor OMP_NUM_THREADS = its num_cpus, which the ranks would inherit and
        # oversubscribe the cores with (4x slower here); like torchrun, a rank gets its own share.
        env = {"OMP_NUM_THREADS": str(max(1, int(r.cpus_per_rank))), **self.env.get(job.name, {})}
        try:
            master: tuple[str | None, int | None] = (None, None)   # single node: the host picks its own
            if r.nodes > 1:   # rank 0's node publishes MASTER_ADDR and a free port to the others
                port = ray.get(self.hosts.host(bundles[0].node).free_port.remote(), timeout=RPC_TIMEOUT_S)
                master = (bundles[0].ip, port)
            for i, b in enumerate(bundles):
                g = GroupHandle(self.hosts.host(b.node), f"{job.name}/{a.n}/node{i}")
                a.agents.append(g)
                a.start_refs.append(g.host.start.remote(
                    g.key, job.name, a.n, i, list(range(i * r.gpus_per_node, (i + 1) * r.gpus_per_node)), r.world_size,
                    str(self.rd.job(job.name).root), b, str(path), master[0], master[1], env))
        except (RayError, GetTimeoutError) as e:
            self._attempt_failed(jr, Observation("lost", detail=f"node host failed at start: {e}"))
            return
        a.start_issued = time.time()
        jr.state = JobState.STARTING

    def _check_started(self, jr: JobRun) -> None:
        a = jr.current
        assert a is not None
        done, _ = ray.wait(a.start_refs, num_returns=len(a.start_refs), timeout=0)
        if len(done) < len(a.start_refs):
            # From when the spawn was asked for: however long the placement waited is not the agents' fault.
            if time.time() - a.start_issued > RPC_TIMEOUT_S * 2:
                self._attempt_failed(jr, Observation("lost", detail="agents did not start the ranks in time"))
            return
        try:
            replies: list[Started] = ray.get(a.start_refs)
        except RayActorError as e:
            self._hosts_lost(a, a.start_refs)
            self._attempt_failed(jr, Observation("lost", detail=f"agent failed at start: {e}"))
            return
        except RayError as e:   # the spawn itself failed (OSError in the agent: no such file, fork limits)
            self._attempt_failed(jr, Observation("crash", detail=f"ranks could not be started: {_cause(e)}"))
            return
        job = jr.job
        a.placement = [{"node": rep.bundle.node, "host": rep.bundle.host, "gpus": list(rep.bundle.gpus)}
                       for rep in replies]
        a.held = a.placement          # the reservation becomes where Ray really put the job
        self.core.hold_gpus(job.name, tuple((h["node"], len(h["gpus"])) for h in a.held),
                            time.time() + self.core.estimates[job.name])
        self.journal.set_attempt(job.name, a.n, state="running", placement=a.placement)
        self.journal.add_processes([ProcessRecord(job.name, a.n, s.rank, s.node, s.pid, s.create_time, s.pgid)
                                    for rep in replies for s in rep.ranks])
        a.exit_refs = [ag.call("wait_exit", EXIT_WAIT_S) for ag in a.agents]
        jr.state = JobState.RUNNING
        where = "; ".join(f"{p['host']}:{p['node'][:8]} GPUs {','.join(p['gpus'])}" for p in a.placement)
        self._say(f"attempt {a.n} started on {where}" + (f", resuming from {Path(a.resumed_from).name}"
                                                        if a.resumed_from else ""), job.name)

    # ------------------------------------------------------------------ supervision

    def _poll(self, jr: JobRun) -> None:
        """Ask the agents, and judge once all of them answered: never waited on, so one slow node
        delays only its own job (and counts as lost after the RPC timeout)."""
        a = jr.current
        assert a is not None and a.watch is not None
        if a.poll_refs is None:
            exited = ray.wait(a.exit_refs, num_returns=len(a.exit_refs), timeout=0)[0] if a.exit_refs else []
            if exited:   # a rank exited (or a wait ran out): look now, and wait again
                a.exit_refs = [ag.call("wait_exit", EXIT_WAIT_S) for ag in a.agents]
            if exited or time.time() - a.poll_sent >= POLL_S:   # paced: a poll answers in milliseconds
                a.poll_refs, a.poll_sent = [ag.call("poll") for ag in a.agents], time.time()
            return
        done, _ = ray.wait(a.poll_refs, num_returns=len(a.poll_refs), timeout=0)
        if len(done) < len(a.poll_refs):
            if time.time() - a.poll_sent > RPC_TIMEOUT_S:
                self._attempt_failed(jr, Observation("lost", detail=f"node agent did not answer in {RPC_TIMEOUT_S:.0f}s"))
            return
        refs, a.poll_refs = a.poll_refs, None
        try:
            reports: list[AgentReport] = ray.get(refs)
        except RayActorError as e:
            self._hosts_lost(a, refs)
            self._attempt_failed(jr, Observation("lost", detail=f"node agent lost: {type(e).__name__}"))
            return
        except RayError as e:   # the agent is there but its poll raised: this attempt cannot be watched
            self._attempt_failed(jr, Observation("lost", detail=f"node agent failed to report: {_cause(e)}"))
            return
        ranks = [r for rep in reports for r in rep.ranks]
        for r in ranks:   # each rank's end on record: the benchmarks' bounds count the ranks' own time
            if r.exit_code is not None and r.pid not in a.exits_recorded:
                a.exits_recorded.add(r.pid)
                self.journal.end_process(jr.job.name, a.n, r.pid, r.exit_code, r.exited_at)
        children = [ProcessRecord(jr.job.name, a.n, c.rank, rep.node, c.pid, c.create_time, None, "child")
                    for rep in reports for c in rep.new_children]
        if children:
            self.journal.add_processes(children)
        # Judged at the time the agents looked, not now: this loop may have been busy with another job.
        obs = a.watch.observe(ranks, now=min(rep.time for rep in reports))
        for phase in LEARNED_PHASES:
            learned = a.watch.learned.get(phase)
            if learned is not None and learned != jr.learned.get(phase):
                jr.learned[phase] = learned  # kept for the next attempt, and in the journal for bin/resume
                self.journal.record_decision(Decision(jr.job.name, "timeout", {"phase": phase, "seconds": learned}))
                self.journal.event("learned", f"{phase} timeout learned: {learned:.1f}s", job=jr.job.name,
                                   phase=phase, timeout=learned)
        self._record_progress(jr, obs)
        if obs.verdict == "running":
            return
        if obs.verdict == "done":
            self._attempt_done(jr, obs)
        else:
            self._attempt_failed(jr, obs)

    def _hosts_lost(self, a: Attempt, refs: list[Any]) -> None:
        """Which of the attempt's hosts died (all its refs are resolved): the next job there gets a new one."""
        for g, ref in zip(a.agents, refs):
            try:
                ray.get(ref, timeout=0)
            except RayActorError:
                self.hosts.lost(g.host)
            except (RayError, GetTimeoutError):
                pass

    def _record_progress(self, jr: JobRun, obs: Observation) -> None:
        a = jr.current
        assert a is not None
        name = jr.job.name
        a.step = obs.step
        progress: dict[str, Any] = {"step": obs.step, "total_steps": obs.total_steps, "heartbeat_time": time.time()}
        if obs.loss is not None:  # the final "done" heartbeat carries no loss: keep the last one
            progress["loss"] = obs.loss
        self.journal.set_job(name, **progress)
        if obs.step > 0:   # the job's own speed says when it gives its GPUs back: reservations plan on it
            now = time.time()
            jr.first_step = jr.first_step or (now, obs.step)
            end = estimates.projected_end(jr.first_step, (now, obs.step), obs.total_steps)
            if end is not None:
                self.core.expect_end(name, end)
        self.metrics.update(name, obs.step, obs.total_steps, obs.loss, a.n)
        for ck in checkpoints.complete_checkpoints(self.rd.job(name).checkpoints):
            step = checkpoints.step_of(ck) or 0
            if step > jr.last_ckpt_step:
                jr.last_ckpt_step = step
                jr.restarts_without_progress = 0
                self.journal.record_checkpoint(name, a.n, step, str(ck), True)
        if time.time() - a.last_step_logged > 10 and obs.total_steps:
            a.last_step_logged = time.time()
            loss = f", loss {obs.loss:.4f}" if obs.loss is not None else ""
            log.info("%s: step %d/%d%s", name, obs.step, obs.total_steps, loss)

    # ------------------------------------------------------------------ releasing and ending

    def _begin_release(self, jr: JobRun, grace: float, dump_stacks: bool,
                       then: Callable[[teardown.Released], None], verify: Path | None = None,
                       keep_pg: bool = False) -> None:
        """Hand the attempt's release to a worker thread; `then` runs in this thread when it is over.
        keep_pg: the placement group is not removed but offered to the next placement (`_released`)."""
        a = jr.current
        assert a is not None
        recs = self.journal.processes(job=jr.job.name, attempt=a.n)
        sweeps = {i: teardown.SweepTarget(p["node"], [(r.pid, r.create_time, r.role == "rank") for r in recs
                                                      if r.node == p["node"]])
                  for i, p in enumerate(a.placement)}
        a.poll_refs = None
        a.keep_pg = keep_pg
        future = self.releases.submit(teardown.release, self.run_id, list(a.agents), None if keep_pg else a.pg, grace,
                                      dump_stacks, sweeps, verify)
        future.add_done_callback(lambda _f: self.wake.set())
        jr.stopping = Stopping(future, then)
        jr.state = JobState.STOPPING

    def _check_stopping(self, jr: JobRun, wait: float | None = None) -> None:
        st = jr.stopping
        assert st is not None
        if wait is None and not st.future.done():
            return
        try:
            res = st.future.result(timeout=wait)
        except TimeoutError:
            res = teardown.Released(notes=[f"the release did not finish within {wait:.0f}s"])
        except Exception as e:  # noqa: BLE001 - the books and the journal must still be put right
            res = teardown.Released(notes=[f"the release failed: {type(e).__name__}: {e}"])
        jr.stopping = None
        self._released(jr, res)
        st.then(res)
        if jr.kill_reason and jr.state not in FINAL:
            why, jr.kill_reason = jr.kill_reason, None
            self._end_job(jr, "killed", why)

    def _released(self, jr: JobRun, res: teardown.Released) -> None:
        a = jr.current
        assert a is not None
        name = jr.job.name
        for note in res.notes:
            self._say(note, name, kind="release")
        if res.still_alive:
            log.warning("%s: processes still alive after kill: %s", name, res.still_alive)
        for u in res.unreleased:
            # Leaked memory: keep these GPUs out of scheduling rather than stack a job on them.
            if u.bundle < len(a.held):
                self.quarantined.append(a.held[u.bundle])
            node = a.held[u.bundle]["node"][:8] if u.bundle < len(a.held) else "?"
            self._say(f"GPUs {u.gpus} on node {node} not released after {u.waited_s:.0f}s (held MiB {u.still_held}, "
                      f"pids {u.job_pids_on_gpu}); kept out of scheduling", name, kind="release")
        self.core.release(name, keep=[(h["node"], len(h["gpus"])) for h in a.held if h in self.quarantined])
        if a.keep_pg:   # GPUs verified free: the next job of this shape there takes the reservation as it is
            if res.unreleased or not a.placement:
                remove_placement_group(a.pg)
            else:
                self.spare_pgs.append(SparePg(a.pg, a.bundle_key, tuple(p["node"] for p in a.placement)))
        a.held = []
        monitor.write_run_peaks(self.rd, rebuild=False)

    def _end_job(self, jr: JobRun, state: str, reason: str, failure: str | None = None,
                 codes: dict[int, int | None] | None = None) -> None:
        """A job reaches a final state other than success; its open attempt is closed with it."""
        name, a = jr.job.name, jr.current
        if a is not None and a.recorded and not a.ended:
            lost = max(0, a.step - max(jr.last_ckpt_step, 0))
            self.journal.end_attempt(name, a.n, "killed" if state == "killed" else "failed",
                                     "killed" if state == "killed" else failure, codes or {}, a.step, lost, detail=reason)
            a.ended = True
        jr.state = state
        self.journal.set_job(name, state=state, reason=reason)
        self._say(reason if state == "killed" else f"{state}: {reason}", name,
                  kind="kill" if state == "killed" else "failure")

    def _attempt_done(self, jr: JobRun, obs: Observation) -> None:
        self._begin_release(jr, grace=5.0, dump_stacks=False, then=lambda _res: self._finish_done(jr, obs), keep_pg=True)

    def _finish_done(self, jr: JobRun, obs: Observation) -> None:
        a = jr.current
        assert a is not None
        name = jr.job.name
        try:
            result = read_result(self.rd.job(name).result)
            reason = None if result is not None and result.status == "succeeded" else \
                f"ranks exited 0 but result.json says {result.status if result else 'nothing'!r}"
        except (ValueError, TypeError, OSError) as e:   # torn by hand, not a result, unreadable
            reason = f"ranks exited 0 but result.json cannot be read: {type(e).__name__}: {e}"[:600]
        ok = reason is None
        self.journal.end_attempt(name, a.n, "succeeded" if ok else "failed", None, obs.exit_codes, obs.step)
        a.ended = True
        jr.state = JobState.SUCCEEDED if ok else JobState.FAILED
        self.journal.set_job(name, state=jr.state, reason=reason, step=obs.step)
        self._say(f"{jr.state}" + (f": {reason}" if reason else f" at step {obs.step}"), name)

    def _attempt_failed(self, jr: JobRun, obs: Observation) -> None:
        a = jr.current
        assert a is not None
        self.journal.event("detected", f"{obs.verdict} detected: {obs.detail}", job=jr.job.name, verdict=obs.verdict,
                           attempt=a.n, step=obs.step)
        # A crash before the resumed step was passed: was it the checkpoint? Its manifest says, read
        # in full in the release thread (not the rank's log, whose last lines are teardown noise).
        suspect = Path(a.resumed_from) if checkpoint_suspect(obs.verdict, a.resumed_from, obs.step, a.start_step) else None
        # A hung rank ignores TERM: stacks first (py-spy, so the cause can be found), then a short grace.
        hang = obs.verdict == "hang"
        self._begin_release(jr, grace=2.0 if hang else 10.0, dump_stacks=hang, verify=suspect,
                            then=lambda res: self._finish_failed(jr, obs, res, suspect))

    def _finish_failed(self, jr: JobRun, obs: Observation, res: teardown.Released, suspect: Path | None) -> None:
        a = jr.current
        assert a is not None
        name = jr.job.name
        codes = dict(res.exit_codes)
        codes.update({k: v for k, v in obs.exit_codes.items() if v is not None})
        lost = max(0, obs.step - (jr.last_ckpt_step if jr.last_ckpt_step >= 0 else 0))
        self.journal.end_attempt(name, a.n, "failed", obs.verdict, codes, obs.step, lost, obs.detail)
        a.ended = True
        self._say(f"attempt {a.n} failed ({obs.verdict}): {obs.detail}", name, kind="failure")
        t = jr.job.config.training
        d = FailurePolicy(jr.job.config.retry).decide(
            Verdict(obs.verdict), History(jr.attempts - 1, jr.restarts_without_progress, t.batch_size, t.grad_accum,
                                          tuple(h["node"] for h in a.placement)))
        if d.batch is not None:
            self._shrink_micro_batch(jr, d.batch)
        if suspect is not None:
            if res.checkpoint_problem:
                self._bad_checkpoint(jr, suspect)
                self._say(f"{suspect.name} is broken ({res.checkpoint_problem}); the next attempt falls back", name,
                          kind="checkpoint")
            else:
                self._say(f"the attempt died resuming from {suspect.name}, which verifies whole: kept", name,
                          kind="checkpoint")
        if d.retry:
            jr.restarts_without_progress += 1
            jr.state, jr.retry_at = JobState.WAITING, time.time() + d.delay
            self.journal.set_job(name, state="pending", reason=d.reason)
        else:
            jr.state = JobState.FAILED
            self.journal.set_job(name, state="failed", reason=d.reason)
        self._say(d.reason, name)

    def _shrink_micro_batch(self, jr: JobRun, smaller: BatchChange) -> None:
        """OOM: a smaller micro-batch, more accumulation: the effective batch is unchanged."""
        t = jr.job.config.training
        before = (t.batch_size, t.grad_accum)
        self._set_micro_batch(jr, smaller.batch_size, smaller.grad_accum)
        self.journal.record_decision(Decision(jr.job.name, "micro_batch", {"batch_size": t.batch_size,
                                                                            "grad_accum": t.grad_accum}))
        jr.changes = {"batch_size": [before[0], t.batch_size], "grad_accum": [before[1], t.grad_accum]}
        self._say(f"OOM: batch {before[0]}x{before[1]} -> {t.batch_size}x{t.grad_accum} (effective batch kept)",
                  jr.job.name, kind="change")

    @staticmethod
    def _set_micro_batch(jr: JobRun, batch_size: int, grad_accum: int) -> None:
        t = jr.job.config.training
        t.batch_size, t.grad_accum = batch_size, grad_accum
        if jr.job.ds_config is not None:
            jr.job.ds_config = dsconfig.resolve({**jr.job.ds_config, "train_micro_batch_size_per_gpu": "auto",
                                                 "gradient_accumulation_steps": "auto", "train_batch_size": "auto"},
                                                t, jr.job.config.resources.world_size)

    def _bad_checkpoint(self, jr: JobRun, path: Path) -> None:
        ident = checkpoints.identity(path)
        if jr.bad_checkpoints.get(path) != ident:
            jr.bad_checkpoints[path] = ident
            self.journal.record_decision(Decision(jr.job.name, "bad_checkpoint", {"path": str(path), "identity": ident}))

    def _kill_job(self, jr: JobRun, why: str, grace: float = 10.0) -> None:
        """Placing, starting or running: its agents, placement group and ranks go first (a rank
        spawned by a start still in flight is stopped too: an agent runs its calls in order)."""
        if jr.state == JobState.STOPPING:
            jr.kill_reason = why
            return
        if jr.current is not None and not jr.current.ended and jr.state in LIVE:
            self._begin_release(jr, grace, dump_stacks=False,
                                then=lambda res: self._end_job(jr, "killed", why, codes=res.exit_codes))
            return
        self._end_job(jr, "killed", why)

    def _kill_all(self, why: str, grace: float = 10.0) -> None:
        for jr in self.jobs.values():
            if jr.state not in FINAL:
                self._isolated(jr, lambda j: self._kill_job(j, why, grace))
        deadline = time.time() + grace + 200   # the releases run side by side; wait for all of them
        for jr in self.jobs.values():
            if jr.stopping is not None:
                self._isolated(jr, lambda j: self._check_stopping(j, wait=max(1.0, deadline - time.time())))
        self._say(f"run stopped: {why}")
