"""The controller: runs a validated plan through an `Executor` and keeps the journal.

No Ray here (tests/unit/test_boundaries.py checks): jobs whose needs succeeded are placed by the
scheduling core, the executor is told to reserve their GPUs, start their ranks and release them,
and what it reports back (`launcher.control.executor`'s events) moves each job through its
states; the supervisor's watch and `FailurePolicy` decide finish / restart / give up. Only this
object writes run.db. Nothing in the loop blocks: the executor's `wait` returns as soon as any
event is there, releases run in its worker threads and come back as `ReleaseDone`, back-off is
a deadline on the wait. An unexpected error in one job's handling fails that job, not the run.
How a run or a job is stopped (bin/kill, signals, a journal that cannot be written) is in
`launcher.control.stopping`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from launcher import checkpoints, monitor, rundir
from launcher.contract.result import read_result
from launcher.control import changes, packing, restore
from launcher.control.progress import progress_due
from launcher.control.executor import (AttemptFailed, Event, Executor, NodesChanged, ReleaseDone, ReleaseOrder,
                                       Reported, Reserved, ReserveOrder, Spawned, StartOrder)
from launcher.control.records import AfterRelease, Attempt, JobRun
from launcher.control.states import LIVE, TERMINAL, JobState
from launcher.control.stopping import Stopping
from launcher.journal import Decision, Journal, JournalError, ProcessRecord
from launcher.layout import RunDir
from launcher.node.messages import Released, SweepTarget
from launcher.plan import Plan
from launcher.scheduling import estimates
from launcher.scheduling.books import Books
from launcher.scheduling.model import Placement
from launcher.supervision.failure import Verdict
from launcher.supervision.policy import Action, FailurePolicy, History, checkpoint_suspect
from launcher.supervision.watch import LEARNED_PHASES, AttemptWatch, Observation

log = logging.getLogger("launcher")
PASS_S = 0.25          # a scheduling pass at least this often while jobs wait: reservations move with time
# Which events an attempt can be sent in each state; any other is late (its release began) and dropped.
EXPECTED: dict[type, tuple[JobState, ...]] = {
    Reserved: (JobState.PLACING,), Spawned: (JobState.STARTING,), Reported: (JobState.RUNNING,),
    AttemptFailed: LIVE, ReleaseDone: (JobState.STOPPING,)}


class Metrics(Protocol):
    """Where live progress goes besides the journal (Ray's metrics, for the dashboard)."""
    def update(self, job: str, step: int, total: int | None, loss: float | None, attempt: int) -> None: ...


class Controller(Stopping):
    def __init__(self, plan: Plan, rd: RunDir, journal: Journal, env: dict[str, dict[str, str]], books: Books,
                 executor: Executor, policy: str = "backfill", clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None, memory_backend: str = "host"):
        self.plan, self.rd, self.journal, self.env, self.ex = plan, rd, journal, env, executor
        self.clock, self.metrics = clock, metrics
        self.run_id = rd.root.name
        self.quarantined: list[dict[str, Any]] = []   # placements whose GPU memory never came back
        self.last_wait_note = 0.0
        self.core = restore.make_core(plan, rd, journal, books, policy, memory_backend)
        self.jobs = {name: JobRun(job, self.core) for name, job in plan.jobs.items()}
        restore.load_history(self.jobs, journal, self.core)
        self.stop_requested = threading.Event()
        self.planned_version, self.last_pass = -1, float("-inf")
        rundir.make_reserve(rd)

    # ------------------------------------------------------------------ the loop

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
                now = self.clock()
                for jr in self.jobs.values():
                    if jr.state == JobState.WAITING and now >= jr.retry_at:
                        jr.state = JobState.PENDING   # back-off over: ready again
                if self.core.version != self.planned_version or now - self.last_pass >= PASS_S:
                    self._place_ready(now)
                for ev in self.ex.wait(self._deadline()):
                    self._dispatch(ev)
        except JournalError as e:
            return self._journal_failed(e)
        except BaseException:
            self._kill_all("the driver crashed")
            raise
        finally:
            self.ex.close()
        rundir.free_reserve(self.rd)
        states = {jr.state for jr in self.jobs.values()}
        final = "succeeded" if states == {"succeeded"} else ("killed" if "killed" in states else "failed")
        self.journal.set_run(state=final, ended=time.time())
        self.journal.event("run", f"run {final}")
        return final

    def _deadline(self) -> float:
        """Now when a pass may place something new (a job ended, came back, became ready), else the
        next pass or the end of the nearest back-off, whichever comes first."""
        now = self.clock()
        if self.core.version != self.planned_version:
            return now
        due = self.last_pass + PASS_S
        for jr in self.jobs.values():
            if jr.state == JobState.WAITING:
                due = min(due, jr.retry_at)
        return max(now, due)

    def _dispatch(self, ev: Event) -> None:
        if isinstance(ev, NodesChanged):
            self._nodes_changed(ev)
            return
        jr = self.jobs.get(ev.job)
        if jr is None or jr.current is None or jr.current.n != ev.attempt or jr.state not in EXPECTED[type(ev)]:
            log.debug("dropped a late event: %s", ev)   # e.g. a report that was on its way when the release began
            return
        if isinstance(ev, Reserved):
            self._isolated(jr, lambda j: self._on_reserved(j, ev))
        elif isinstance(ev, Spawned):
            self._isolated(jr, lambda j: self._on_spawned(j, ev))
        elif isinstance(ev, Reported):
            self._isolated(jr, lambda j: self._on_reported(j, ev))
        elif isinstance(ev, AttemptFailed):
            self._isolated(jr, lambda j: self._attempt_failed(j, Observation(ev.verdict, ev.detail,
                                                                             step=j.current.step)))  # type: ignore[union-attr]
        else:
            self._isolated(jr, lambda j: self._on_release_done(j, ev.released))

    def _nodes_changed(self, ev: NodesChanged) -> None:
        """Nodes joined or left the cluster: the books offer the new GPUs from this pass on and no
        longer the lost ones (a job running there is handled by its own attempt's events)."""
        for n in ev.joined:
            self.core.books.add_node(n.node_id, n.gpus, n.gpu_type, n.gpu_mib)
        for n in ev.left:
            self.core.books.drop_node(n.node_id)
        self.core.version += 1
        self.core.reprioritise()
        for line in ev.describe():
            self._say(line, kind="cluster")

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
        fail: AfterRelease = lambda _res: self._end_job(jr, "failed", reason, failure="crash")  # noqa: E731
        if jr.stopping is not None:   # its release is in flight: the job fails once it is over
            jr.stopping = fail
        elif jr.current is not None and not jr.current.ended and jr.state in LIVE:
            self._begin_release(jr, grace=2.0, dump_stacks=False, then=fail)
        else:
            self._end_job(jr, "failed", reason, failure="crash")

    def _finished(self) -> bool:
        return all(jr.state in TERMINAL for jr in self.jobs.values())

    def _say(self, msg: str, job: str | None = None, kind: str = "info", **data: Any) -> None:
        log.info("%s%s", f"{job}: " if job else "", msg)
        self.journal.event(kind, msg, job=job, **data)

    # ------------------------------------------------------------------ placing and starting

    def _skip_blocked(self) -> None:
        while blocked := self.core.blocked():   # a skipped job may block its own dependants
            for name, bad in blocked:
                jr = self.jobs[name]
                jr.state = JobState.SKIPPED
                reason = f"needs {bad}, which {self.jobs[bad].state}"
                self.journal.set_job(name, state="skipped", reason=reason)
                self._say(f"skipped: {reason}", name)

    def _place_ready(self, now: float) -> None:
        """What the scheduling policy places now, with GPUs held in our books on the nodes it chose.

        The executor is asked only when our own books say the job fits: a Ray placement group that
        must wait is retried by Ray with a growing back-off (minutes), long after the GPUs came free.
        """
        self.planned_version, self.last_pass = self.core.version, now
        planned = self.core.schedule(now)
        for p in planned.placements:
            self._isolated(self.jobs[p.name], lambda jr: self._place(jr, p, now))   # placed, or failed
        self.ex.end_pass()
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
            # a node left and nothing replaced it yet: say so rather than wait in silence
            for n in ready if not self.quarantined else []:
                if not self.core.could_ever_fit(n):
                    self._say(f"does not fit the cluster as it is now ({self.core.books.capacity()} GPU(s) on "
                              f"{sum(1 for c in self.core.books.capacity_of.values() if c)} node(s)): waiting "
                              "for nodes to join (bin/kill to stop it)", n, kind="cluster")

    def _place(self, jr: JobRun, p: Placement, now: float) -> None:
        r = jr.job.config.resources
        jr.attempts += 1
        jr.current = Attempt(n=jr.attempts, held=[{"node": n, "gpus": [""] * r.gpus_per_node} for n in p.nodes])
        self.core.hold(p, now)
        jr.first_step = None
        jr.progress_written = None
        jr.state = JobState.PLACING
        shape, fraction = self.core.jobs[jr.job.name].shape, packing.reserve_fraction(self.core, p)
        self.ex.reserve(ReserveOrder(jr.job.name, jr.attempts, shape, p.nodes, r.cpus_per_rank * r.gpus_per_node,
                                     fraction))
        what = (f"{shape.mib} MiB of a shared GPU" if fraction else
                f"{r.nodes} x {r.gpus_per_node} GPU(s){' ' + r.gpu_type if r.gpu_type else ''}")
        self._say(f"waiting for {what} (attempt {jr.attempts})", jr.job.name)

    def _fail_unplaceable(self, jr: JobRun) -> None:
        """Rather than wait forever: the GPUs this job needs are held by memory an earlier job leaked."""
        reason = (f"can no longer be placed: GPUs {[q['gpus'] for q in self.quarantined]} kept out of scheduling "
                  "because their memory was not released (see bin/logs and the 'release' events; free them and "
                  "bin/resume the run)")
        self._end_job(jr, "failed", reason)

    def _on_reserved(self, jr: JobRun, ev: Reserved) -> None:
        """GPUs reserved: choose the checkpoint, put the attempt on record, have its ranks spawned."""
        a, job = jr.current, jr.job
        assert a is not None
        r = job.config.resources
        still_bad = {p for p, ident in jr.bad_checkpoints.items() if checkpoints.identity(p) in (ident, "")}
        resume, rejected = checkpoints.newest_usable(self.rd.job(job.name).checkpoints, still_bad)
        for path, why in rejected:
            self._bad_checkpoint(jr, path)
            self._say(f"checkpoint {path.name} is unusable ({why}); falling back to an older one", job.name,
                      kind="checkpoint")
        a.resumed_from = str(resume) if resume else None
        a.start_step = (checkpoints.step_of(resume) or 0) if resume else 0
        a.watch = AttemptWatch(job.config.hang, started=self.clock(), learned=jr.learned,
                               exit_classes=dict(job.config.retry.on_exit_codes))
        # The row exists from here on: whatever happens to the start, the attempt is on record.
        self.journal.start_attempt(job.name, a.n, [], a.resumed_from, a.start_step, jr.changes or None, state="starting")
        a.recorded = True
        jr.changes = {}
        path = rundir.write_job_file(rundir.job_file(self.plan, job, self.rd, a.n, a.resumed_from), self.rd)
        # Ray gives an actor OMP_NUM_THREADS = its num_cpus, which the ranks would inherit and
        # oversubscribe the cores with (4x slower here); like torchrun, a rank gets its own share.
        env = {"OMP_NUM_THREADS": str(max(1, int(r.cpus_per_rank))), **self.env.get(job.name, {})}
        env = {**packing.attempt_env(self.core, job.name), **env}
        share = packing.share_of(self.core, job.name)
        a.watch.share_mib = share.mib if share is not None else None
        jr.state = JobState.STARTING
        self.ex.start(StartOrder(job.name, a.n, ev.bundles, job.ranks_per_node, r.nodes * job.ranks_per_node,
                                 self.rd.job(job.name).root,
                                 path, env))

    def _on_spawned(self, jr: JobRun, ev: Spawned) -> None:
        a, name = jr.current, jr.job.name
        assert a is not None
        a.placement = [{"node": rep.bundle.node, "host": rep.bundle.host, "gpus": list(rep.bundle.gpus)}
                       for rep in ev.replies]
        a.held = a.placement          # the reservation becomes where the executor really put the job
        packing.hold_where_placed(self.core, name, a.placement, self.clock() + self.core.estimates[name])
        self.journal.set_attempt(name, a.n, state="running", placement=a.placement)
        self.journal.add_processes([ProcessRecord(name, a.n, s.rank, s.node, s.pid, s.create_time, s.pgid)
                                    for rep in ev.replies for s in rep.ranks])
        jr.state = JobState.RUNNING
        where = "; ".join(f"{p['host']}:{p['node'][:8]} GPUs {','.join(p['gpus'])}" for p in a.placement)
        self._say(f"attempt {a.n} started on {where}" + (f", resuming from {Path(a.resumed_from).name}"
                                                        if a.resumed_from else ""), name)

    # ------------------------------------------------------------------ supervision

    def _on_reported(self, jr: JobRun, ev: Reported) -> None:
        a, name = jr.current, jr.job.name
        assert a is not None and a.watch is not None
        ranks = [r for rep in ev.reports for r in rep.ranks]
        for r in ranks:   # each rank's end on record: the benchmarks' bounds count the ranks' own time
            if r.exit_code is not None and r.pid not in a.exits_recorded:
                a.exits_recorded.add(r.pid)
                self.journal.end_process(name, a.n, r.pid, r.exit_code, r.exited_at)
        children = [ProcessRecord(name, a.n, c.rank, rep.node, c.pid, c.create_time, None, "child")
                    for rep in ev.reports for c in rep.new_children]
        if children:
            self.journal.add_processes(children)
        # Judged at the time the hosts looked, not now: this loop may have been busy with another job.
        held = [m for rep in ev.reports for m in rep.job_mib.values() if m is not None]
        obs = a.watch.observe(ranks, now=min(rep.time for rep in ev.reports), memory_mib=max(held, default=None))
        for phase in LEARNED_PHASES:
            learned = a.watch.learned.get(phase)
            if learned is not None and learned != jr.learned.get(phase):
                jr.learned[phase] = learned  # kept for the next attempt, and in the journal for bin/resume
                self.journal.record_decision(Decision(name, "timeout", {"phase": phase, "seconds": learned}))
                self.journal.event("learned", f"{phase} timeout learned: {learned:.1f}s", job=name,
                                   phase=phase, timeout=learned)
        self._record_progress(jr, obs)
        if obs.verdict == Verdict.DONE:
            self._begin_release(jr, grace=5.0, dump_stacks=False, then=lambda _res: self._finish_done(jr, obs), keep=True)
        elif obs.verdict != Verdict.RUNNING:
            self._attempt_failed(jr, obs)

    def _record_progress(self, jr: JobRun, obs: Observation) -> None:
        a, name, now = jr.current, jr.job.name, self.clock()
        assert a is not None
        a.step = obs.step
        progress: dict[str, Any] = {"step": obs.step, "total_steps": obs.total_steps, "heartbeat_time": now}
        if obs.loss is not None:  # the final "done" heartbeat carries no loss: keep the last one
            progress["loss"] = obs.loss
        if progress_due(jr.progress_written, now, obs.step, obs.total_steps):
            self.journal.set_job(name, **progress)
            jr.progress_written = (now, obs.step)
        if obs.step > 0:   # the job's own speed says when it gives its GPUs back: reservations plan on it
            jr.first_step = jr.first_step or (now, obs.step)
            end = estimates.projected_end(jr.first_step, (now, obs.step), obs.total_steps or None)   # 0: unknown
            if end is not None:
                self.core.expect_end(name, end)
        if self.metrics is not None:
            self.metrics.update(name, obs.step, obs.total_steps, obs.loss, a.n)
        for ck in checkpoints.complete_checkpoints(self.rd.job(name).checkpoints):
            step = checkpoints.step_of(ck) or 0
            if step > jr.last_ckpt_step:
                jr.last_ckpt_step = step
                jr.restarts_without_progress = 0
                self.journal.record_checkpoint(name, a.n, step, str(ck), True)
        if now - a.last_step_logged > 10 and obs.total_steps:
            a.last_step_logged = now
            loss = f", loss {obs.loss:.4f}" if obs.loss is not None else ""
            log.info("%s: step %d/%d%s", name, obs.step, obs.total_steps, loss)

    def _attempt_failed(self, jr: JobRun, obs: Observation) -> None:
        a = jr.current
        assert a is not None
        self.journal.event("detected", f"{obs.verdict} detected: {obs.detail}", job=jr.job.name, verdict=obs.verdict,
                           attempt=a.n, step=obs.step)
        # A crash before the resumed step was passed: was it the checkpoint? Its manifest says, read
        # in full by the release (not the rank's log, whose last lines are teardown noise).
        suspect = Path(a.resumed_from) if checkpoint_suspect(obs.verdict, a.resumed_from, obs.step, a.start_step) else None
        # A hung rank ignores TERM: stacks first (py-spy, so the cause can be found), then a short grace.
        hang = obs.verdict == Verdict.HANG
        self._begin_release(jr, grace=2.0 if hang else 10.0, dump_stacks=hang, verify=suspect,
                            then=lambda res: self._finish_failed(jr, obs, res, suspect))

    # ------------------------------------------------------------------ releasing and ending

    def _begin_release(self, jr: JobRun, grace: float, dump_stacks: bool, then: AfterRelease,
                       verify: Path | None = None, keep: bool = False) -> None:
        """The executor releases the attempt on its own; `then` runs here once it reports back."""
        a = jr.current
        assert a is not None
        recs = self.journal.processes(job=jr.job.name, attempt=a.n)
        sweeps = {i: SweepTarget(p["node"], [(r.pid, r.create_time, r.role == "rank") for r in recs
                                             if r.node == p["node"]])
                  for i, p in enumerate(a.placement)}
        jr.stopping = then
        jr.state = JobState.STOPPING
        self.ex.release(ReleaseOrder(jr.job.name, a.n, grace, dump_stacks, sweeps, verify, keep))

    def _on_release_done(self, jr: JobRun, res: Released) -> None:
        then, jr.stopping = jr.stopping, None
        self._released(jr, res)
        if then is not None:
            then(res)
        if jr.kill_reason and jr.state not in TERMINAL:
            why, jr.kill_reason = jr.kill_reason, None
            self._end_job(jr, "killed", why)

    def _released(self, jr: JobRun, res: Released) -> None:
        a, name = jr.current, jr.job.name
        assert a is not None
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

    def _finish_done(self, jr: JobRun, obs: Observation) -> None:
        a, name = jr.current, jr.job.name
        assert a is not None
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

    def _finish_failed(self, jr: JobRun, obs: Observation, res: Released, suspect: Path | None) -> None:
        a, name = jr.current, jr.job.name
        assert a is not None
        codes = dict(res.exit_codes)
        codes.update({k: v for k, v in obs.exit_codes.items() if v is not None})
        lost = max(0, obs.step - (jr.last_ckpt_step if jr.last_ckpt_step >= 0 else 0))
        self.journal.end_attempt(name, a.n, "failed", obs.verdict, codes, obs.step, lost, obs.detail)
        a.ended = True
        self._say(f"attempt {a.n} failed ({obs.verdict}): {obs.detail}", name, kind="failure")
        t = jr.job.config.training
        # A packed job's OOM: its share was too small, not its micro-batch. Whole GPUs from now on.
        outgrew = obs.verdict == Verdict.OOM and self.core.jobs[name].shape.packed
        if outgrew:
            self.core.make_exclusive(name)
            self.journal.record_decision(Decision(name, "exclusive", {"attempt": a.n, "share_mib": a.watch.share_mib
                                                                      if a.watch else None}))
            self._say("OOM while sharing a GPU: the next attempt gets a whole GPU", name, kind="change")
        d = FailurePolicy(jr.job.config.retry).decide(
            Verdict(obs.verdict), History(jr.attempts - 1, jr.restarts_without_progress,
                                          *((1, 1) if outgrew else jr.job.micro_batch),
                                          tuple(h["node"] for h in a.placement)))
        if d.batch is not None:
            before = changes.shrink_micro_batch(jr, d.batch)
            self.journal.record_decision(Decision(name, "micro_batch", {"batch_size": t.batch_size,
                                                                        "grad_accum": t.grad_accum}))
            self._say(f"OOM: batch {before[0]}x{before[1]} -> {t.batch_size}x{t.grad_accum} (effective batch kept)",
                      name, kind="change")
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
            if d.action == Action.RESTART_ELSEWHERE:
                self.core.avoid_nodes(name, d.avoid_nodes)
        self.journal.record_decision(Decision(name, "restart" if d.retry else "give_up", {
            "attempt": a.n, "action": str(d.action), "delay": d.delay, "reason": d.reason,
            "avoid_nodes": list(d.avoid_nodes), "restarts_without_progress": jr.restarts_without_progress}))
        if d.retry:
            jr.state, jr.retry_at = JobState.WAITING, self.clock() + d.delay
            self.journal.set_job(name, state="pending", reason=d.reason)
        else:
            jr.state = JobState.FAILED
            self.journal.set_job(name, state="failed", reason=d.reason)
        self._say(d.reason, name)

    def _bad_checkpoint(self, jr: JobRun, path: Path) -> None:
        ident = checkpoints.identity(path)
        if jr.bad_checkpoints.get(path) != ident:
            jr.bad_checkpoints[path] = ident
            self.journal.record_decision(Decision(jr.job.name, "bad_checkpoint", {"path": str(path), "identity": ident}))
