"""The driver: runs a validated plan on Ray and keeps the journal.

Jobs whose needs succeeded get a placement group (one bundle per node), one NodeAgent per
bundle spawns the ranks, and the supervisor's verdicts decide finish / restart / fail.
Only this process writes run.db.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from launcher import checkpoints, control, dsconfig, monitor, rundir, scheduler
from launcher.agent import RemoteAgent, sweep_node
from launcher.atomic import read_json
from launcher.journal import Decision, Journal, ProcessRecord
from launcher.layout import RunDir
from launcher.plan import Job, Plan
from launcher.raymetrics import ProgressMetrics
from launcher.resources import ClusterShape
from launcher.supervisor import AttemptWatch, Observation, decide_retry, smaller_micro_batch

log = logging.getLogger("launcher")
POLL_S = 0.25
CHECKPOINT_ERROR_RE = re.compile(r"checkpoint|PytorchStreamReader|unpickl|safetensors|state_dict|EOFError", re.I)
RPC_TIMEOUT_S = 60.0


@dataclass
class Attempt:
    n: int
    pg: PlacementGroup
    held: list[dict[str, Any]] = field(default_factory=list)   # GPUs in our books: reserved, then placed
    ready_ref: Any = None             # pg.ready() once: each call schedules a new task in the group
    start_refs: list[Any] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    agents: list[Any] = field(default_factory=list)
    watch: AttemptWatch | None = None
    resumed_from: str | None = None
    start_step: int = 0
    placement: list[dict[str, Any]] = field(default_factory=list)
    last_step_logged: float = 0.0
    step: int = 0                     # newest step reported by the ranks


@dataclass
class JobRun:
    job: Job
    state: str = "pending"   # pending | placing | starting | running | waiting | succeeded | failed | skipped | killed
    attempts: int = 0
    restarts_without_progress: int = 0
    retry_at: float = 0.0
    current: Attempt | None = None
    learned_step_timeout: float | None = None
    changes: dict[str, Any] = field(default_factory=dict)   # what the next attempt runs differently (OOM)
    bad_checkpoints: set[Path] = field(default_factory=set)
    last_ckpt_step: int = -1


class Driver:
    def __init__(self, plan: Plan, rd: RunDir, journal: Journal, env: dict[str, dict[str, str]], shape: ClusterShape,
                 policy: str = "critical-path"):
        self.plan, self.rd, self.journal, self.env, self.shape, self.policy = plan, rd, journal, env, shape, policy
        self.books = scheduler.Books(shape)
        self.quarantined: list[dict[str, Any]] = []   # placements whose GPU memory never came back
        self.order = {n: i for i, n in enumerate(plan.jobs)}
        self.last_wait_note = 0.0
        self.run_id = rd.root.name
        self.metrics = ProgressMetrics(self.run_id)
        self.jobs = {name: JobRun(job) for name, job in plan.jobs.items()}
        self._load_history()
        self.priority = plan.graph.critical_path({n: scheduler.estimate_seconds(j) for n, j in plan.jobs.items()})
        self.stop_requested = threading.Event()

    def _load_history(self) -> None:
        """Continue a run from its journal (bin/resume): finished jobs stay finished; the rest start
        again from their newest complete checkpoint, attempt numbers going on from the last one."""
        rows = {r["name"]: r for r in self.journal.jobs()}
        for name, jr in self.jobs.items():
            row = rows.get(name)
            if row is None:
                continue
            if row["state"] == "succeeded":
                jr.state = "succeeded"
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
                    jr.bad_checkpoints.add(Path(d.data["path"]))
                elif d.kind == "step_timeout":
                    jr.learned_step_timeout = max(d.data["seconds"], jr.learned_step_timeout or 0.0)

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
                while self._place_ready() is not None:  # as many ready jobs as fit now
                    pass
                polls = {n: [ag.poll.remote() for ag in jr.current.agents]
                         for n, jr in self.jobs.items() if jr.state == "running" and jr.current is not None}
                for name, jr in self.jobs.items():
                    if jr.state == "placing":
                        self._maybe_start(jr)
                    elif jr.state == "starting":
                        self._check_started(jr)
                    elif name in polls and jr.state == "running":
                        self._poll(jr, polls[name])
                    elif jr.state == "waiting" and time.time() >= jr.retry_at:
                        jr.state = "pending"
                time.sleep(POLL_S)
        except BaseException:
            self._kill_all("the driver crashed")
            raise
        states = {jr.state for jr in self.jobs.values()}
        final = "succeeded" if states == {"succeeded"} else ("killed" if "killed" in states else "failed")
        self.journal.set_run(state=final, ended=time.time())
        self.journal.event("run", f"run {final}")
        return final

    def _handle_requests(self) -> bool:
        """bin/kill requests; True when the whole run was killed."""
        for path, req in control.pending(self.rd.root):
            path.unlink(missing_ok=True)
            grace = 0.0 if req.force else 10.0
            if req.job is None:
                self._kill_all(f"killed by {req.by}" + (" (forced)" if req.force else ""), grace)
                return True
            jr = self.jobs.get(req.job)
            if jr is None or jr.state in ("succeeded", "failed", "skipped", "killed"):
                self._say(f"kill request for {req.job}: nothing to kill", req.job)
                continue
            self._kill_job(jr, f"killed by {req.by}" + (" (forced)" if req.force else ""), grace)
        return False

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop_requested.set())

    def _finished(self) -> bool:
        return all(jr.state in ("succeeded", "failed", "skipped", "killed") for jr in self.jobs.values())

    def _say(self, msg: str, job: str | None = None, kind: str = "info", **data: Any) -> None:
        log.info("%s%s", f"{job}: " if job else "", msg)
        self.journal.event(kind, msg, job=job, **data)

    # ------------------------------------------------------------------ scheduling

    def _skip_blocked(self) -> None:
        for name, jr in self.jobs.items():
            if jr.state != "pending":
                continue
            bad = [u for u in jr.job.needs if self.jobs[u].state in ("failed", "skipped", "killed")]
            if bad:
                jr.state = "skipped"
                reason = f"needs {bad[0]}, which {self.jobs[bad[0]].state}"
                self.journal.set_job(name, state="skipped", reason=reason)
                self._say(f"skipped: {reason}", name)

    def _place_ready(self) -> JobRun | None:
        """The longest critical path that fits now, with GPUs reserved in our books on chosen nodes.

        Ray is asked only when our own books say the job fits: a placement group that must wait
        is retried by Ray with a growing back-off (minutes), long after the GPUs came free.
        """
        ready = [n for n, jr in self.jobs.items() if jr.state == "pending"
                 and all(self.jobs[u].state == "succeeded" for u in jr.job.needs)]
        name = scheduler.pick(ready, self.priority, self.order,
                              lambda n: self.books.choose(self.jobs[n].job.config.resources) is not None, self.policy)
        if name is None:
            for n in ready if self.quarantined else []:
                if not self.books.could_ever_fit(self.jobs[n].job.config.resources, self.quarantined):
                    self._fail_unplaceable(self.jobs[n])
            if ready and time.time() - self.last_wait_note > 30:
                self.last_wait_note = time.time()
                log.info("waiting for GPUs: %s ready, %d GPU(s) free", ", ".join(ready), self.books.free_gpus())
            return None
        jr = self.jobs[name]
        r = jr.job.config.resources
        nodes = self.books.choose(r)
        assert nodes is not None
        bundle: dict[str, float] = {"GPU": float(r.gpus_per_node)}
        if r.cpus_per_rank:
            bundle["CPU"] = r.cpus_per_rank * r.gpus_per_node
        if r.gpu_type:
            bundle[f"accelerator_type:{r.gpu_type}"] = 0.001
        strategy = "STRICT_PACK" if r.nodes == 1 else "STRICT_SPREAD"
        pg = placement_group([dict(bundle) for _ in range(r.nodes)], strategy=strategy,
                             name=f"{self.run_id}/{jr.job.name}/{jr.attempts + 1}",
                             _soft_target_node_id=nodes[0] if r.nodes == 1 else None)
        jr.attempts += 1
        jr.current = Attempt(n=jr.attempts, pg=pg, held=[{"node": n, "gpus": [""] * r.gpus_per_node} for n in nodes])
        self.books.hold(jr.current.held, +1)
        jr.state = "placing"
        self._say(f"waiting for {r.nodes} x {r.gpus_per_node} GPU(s){' ' + r.gpu_type if r.gpu_type else ''} "
                  f"(attempt {jr.attempts})", jr.job.name)
        return jr

    def _fail_unplaceable(self, jr: JobRun) -> None:
        """Rather than wait forever: the GPUs this job needs are held by memory an earlier job leaked."""
        reason = (f"can no longer be placed: GPUs {[q['gpus'] for q in self.quarantined]} kept out of scheduling "
                  "because their memory was not released (see bin/logs and the 'release' events; free them and "
                  "bin/resume the run)")
        jr.state = "failed"
        self.journal.set_job(jr.job.name, state="failed", reason=reason)
        self._say(f"failed: {reason}", jr.job.name, kind="failure")

    def _maybe_start(self, jr: JobRun) -> None:
        """Placement group ready: create the agents and ask them to spawn the ranks (not waited on)."""
        a = jr.current
        assert a is not None
        if a.ready_ref is None:
            a.ready_ref = a.pg.ready()
        ready, _ = ray.wait([a.ready_ref], timeout=0)
        if not ready:
            return
        job, r = jr.job, jr.job.config.resources
        resume, rejected = checkpoints.newest_usable(self.rd.job(job.name).checkpoints, jr.bad_checkpoints)
        for path, why in rejected:
            self._bad_checkpoint(jr, path)
            self._say(f"checkpoint {path.name} is unusable ({why}); falling back to an older one", job.name,
                      kind="checkpoint")
        a.resumed_from = str(resume) if resume else None
        a.start_step = (checkpoints.step_of(resume) or 0) if resume else 0
        a.watch = AttemptWatch(job.config.hang, learned_step_timeout=jr.learned_step_timeout)
        path = rundir.write_job_file(rundir.job_file(self.plan, job, self.rd, a.n, a.resumed_from), self.rd)
        # Ray gives an actor OMP_NUM_THREADS = its num_cpus, which the ranks would inherit and
        # oversubscribe the cores with (4x slower here); like torchrun, a rank gets its own share.
        env = {"OMP_NUM_THREADS": str(max(1, int(r.cpus_per_rank))), **self.env.get(job.name, {})}
        try:
            for i in range(r.nodes):
                strat = PlacementGroupSchedulingStrategy(placement_group=a.pg, placement_group_bundle_index=i)
                a.agents.append(RemoteAgent.options(
                    name=f"{self.run_id}/{job.name}/node{i}", num_gpus=r.gpus_per_node,
                    num_cpus=r.cpus_per_rank * r.gpus_per_node, scheduling_strategy=strat, max_restarts=0,
                ).remote(self.run_id, job.name, a.n, i, list(range(i * r.gpus_per_node, (i + 1) * r.gpus_per_node)),
                         r.world_size, str(self.rd.job(job.name).root)))
            if r.nodes == 1:  # the agent picks its own address and port: one round trip
                a.start_refs = [a.agents[0].start.remote(str(path), None, None, env)]
            else:             # rank 0's agent publishes MASTER_ADDR and a free port to the others
                info0 = ray.get(a.agents[0].info.remote(), timeout=RPC_TIMEOUT_S)
                port = ray.get(a.agents[0].free_port.remote(), timeout=RPC_TIMEOUT_S)
                a.start_refs = [ag.start.remote(str(path), info0["ip"], port, env) for ag in a.agents]
        except (RayActorError, GetTimeoutError) as e:
            self._attempt_failed(jr, Observation("lost", detail=f"agent failed at start: {e}"))
            return
        jr.state = "starting"

    def _check_started(self, jr: JobRun) -> None:
        a = jr.current
        assert a is not None
        done, _ = ray.wait(a.start_refs, num_returns=len(a.start_refs), timeout=0)
        if len(done) < len(a.start_refs):
            if time.time() - a.created > RPC_TIMEOUT_S * 2:
                self._attempt_failed(jr, Observation("lost", detail="agents did not start the ranks in time"))
            return
        try:
            replies = ray.get(a.start_refs)
        except RayActorError as e:
            self._attempt_failed(jr, Observation("lost", detail=f"agent failed at start: {e}"))
            return
        job = jr.job
        a.placement = [{"node": rep["info"]["node"], "host": rep["info"]["host"], "gpus": rep["info"]["gpus"]}
                       for rep in replies]
        self.books.hold(a.held, -1)  # the reservation becomes where Ray really put the job
        a.held = a.placement
        self.books.hold(a.held, +1)
        self.journal.start_attempt(job.name, a.n, a.placement, a.resumed_from, a.start_step, jr.changes or None)
        jr.changes = {}
        self.journal.add_processes([ProcessRecord(job.name, a.n, s["rank"], s["node"], s["pid"], s["create_time"], s["pgid"])
                                    for rep in replies for s in rep["ranks"]])
        jr.state = "running"
        where = "; ".join(f"{p['host']}:{p['node'][:8]} GPUs {','.join(p['gpus'])}" for p in a.placement)
        self._say(f"attempt {a.n} started on {where}" + (f", resuming from {Path(a.resumed_from).name}"
                                                        if a.resumed_from else ""), job.name)

    # ------------------------------------------------------------------ supervision

    def _poll(self, jr: JobRun, refs: list[Any]) -> None:
        """refs: this job's agent polls, issued together with every other job's (one wait for all)."""
        a = jr.current
        assert a is not None and a.watch is not None
        try:
            reports = ray.get(refs, timeout=RPC_TIMEOUT_S)
        except (RayActorError, GetTimeoutError) as e:
            self._attempt_failed(jr, Observation("lost", detail=f"node agent lost: {type(e).__name__}"))
            return
        ranks = [r for rep in reports for r in rep["ranks"]]
        children = [ProcessRecord(jr.job.name, a.n, rank, rep["node"], pid, ct, None, "child")
                    for rep in reports for pid, ct, rank in rep["new_children"]]
        if children:
            self.journal.add_processes(children)
        # Judged at the time the agents looked, not now: this loop may have been busy with another job.
        obs = a.watch.observe(ranks, now=min(rep["time"] for rep in reports))
        learned = a.watch.learned_step_timeout
        if learned is not None and learned != jr.learned_step_timeout:
            jr.learned_step_timeout = learned  # kept for the next attempt, and in the journal for bin/resume
            self.journal.record_decision(Decision(jr.job.name, "step_timeout", {"seconds": learned}))
            self.journal.event("learned", f"step timeout learned: {learned:.1f}s", job=jr.job.name, step_timeout=learned)
        self._record_progress(jr, obs)
        if obs.verdict == "running":
            return
        if obs.verdict == "done":
            self._attempt_done(jr, obs)
        else:
            self._attempt_failed(jr, obs)

    def _record_progress(self, jr: JobRun, obs: Observation) -> None:
        a = jr.current
        assert a is not None
        name = jr.job.name
        a.step = obs.step
        progress: dict[str, Any] = {"step": obs.step, "total_steps": obs.total_steps, "heartbeat_time": time.time()}
        if obs.loss is not None:  # the final "done" heartbeat carries no loss: keep the last one
            progress["loss"] = obs.loss
        self.journal.set_job(name, **progress)
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

    def _release(self, a: Attempt, grace: float, job: str = "") -> dict[int, int | None]:
        """Stop ranks (verified kills), then free the agents and the placement group.

        An agent that cannot answer (lost) has its node swept by a task pinned to that node,
        from the processes the journal recorded for this attempt.
        """
        codes: dict[int, int | None] = {}
        refs = [ag.stop.remote(grace) for ag in a.agents]
        for i, ref in enumerate(refs):
            try:
                res = ray.get(ref, timeout=grace + 120)
                codes.update({int(k): v for k, v in res["exit_codes"].items()})
                if res["still_alive"]:
                    log.warning("%s: processes still alive after kill: %s", job, res["still_alive"])
                rel = res.get("release")
                if rel and not rel["released"] and i < len(a.held):
                    # Leaked memory: keep these GPUs out of scheduling rather than stack a job on them.
                    self.quarantined.append(a.held[i])
                    self._say(f"GPUs {res['gpus']} on node {a.held[i]['node'][:8]} not released after "
                              f"{rel['waited_s']:.0f}s (held MiB {rel['still_held']}, pids {rel['job_pids_on_gpu']}); "
                              "kept out of scheduling", job, kind="release")
            except (RayActorError, GetTimeoutError) as e:
                log.warning("%s: agent %d did not stop its ranks (%s); sweeping its node", job, i, type(e).__name__)
                if i < len(a.placement):
                    self._sweep_node(job, a, a.placement[i]["node"])
        for ag in a.agents:
            ray.kill(ag, no_restart=True)
        remove_placement_group(a.pg)
        self.books.hold([h for h in a.held if h not in self.quarantined], -1)
        a.held = []
        monitor.write_run_peaks(self.rd, rebuild=False)
        return codes

    def _sweep_node(self, job: str, a: Attempt, node: str) -> None:
        recs = [(r.pid, r.create_time, r.role == "rank") for r in self.journal.processes(job=job, attempt=a.n)
                if r.node == node]
        strat = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        try:
            hit = ray.get(sweep_node.options(scheduling_strategy=strat).remote(self.run_id, recs), timeout=RPC_TIMEOUT_S)
            if hit:
                self._say(f"swept {len(hit)} leftover process(es) on node {node[:8]}: {hit}", job, kind="sweep")
        except (RayActorError, GetTimeoutError, ray.exceptions.RayError) as e:
            self._say(f"could not sweep node {node[:8]} ({type(e).__name__}); is the node gone?", job, kind="sweep")

    def _attempt_done(self, jr: JobRun, obs: Observation) -> None:
        a = jr.current
        assert a is not None
        name = jr.job.name
        self._release(a, grace=5.0, job=name)
        result = read_json(self.rd.job(name).result) or {}
        ok = result.get("status") == "succeeded"
        self.journal.end_attempt(name, a.n, "succeeded" if ok else "failed", None, obs.exit_codes, obs.step)
        jr.state = "succeeded" if ok else "failed"
        reason = None if ok else f"ranks exited 0 but result.json says {result.get('status', 'nothing')!r}"
        self.journal.set_job(name, state=jr.state, reason=reason, step=obs.step)
        self._say(f"{jr.state}" + (f": {reason}" if reason else f" at step {obs.step}"), name)

    def _attempt_failed(self, jr: JobRun, obs: Observation) -> None:
        a = jr.current
        assert a is not None
        name = jr.job.name
        self.journal.event("detected", f"{obs.verdict} detected: {obs.detail}", job=name, verdict=obs.verdict,
                           attempt=a.n, step=obs.step)
        grace = 10.0
        if obs.verdict == "hang":
            # Stacks first, so the cause can be found; then no long grace: a hung rank ignores TERM.
            try:
                ray.get([ag.dump_stacks.remote() for ag in a.agents], timeout=RPC_TIMEOUT_S)
            except (RayActorError, GetTimeoutError) as e:
                log.warning("%s: could not dump stacks: %s", name, e)
            grace = 2.0
        codes = self._release(a, grace=grace, job=name)
        codes.update({k: v for k, v in obs.exit_codes.items() if v is not None})
        lost = max(0, obs.step - (jr.last_ckpt_step if jr.last_ckpt_step >= 0 else 0))
        self.journal.end_attempt(name, a.n, "failed", obs.verdict, codes, obs.step, lost, obs.detail)
        self._say(f"attempt {a.n} failed ({obs.verdict}): {obs.detail}", name, kind="failure")
        if obs.verdict == "oom":
            self._shrink_micro_batch(jr)
        if (obs.verdict == "crash" and a.resumed_from and obs.step <= a.start_step
                and CHECKPOINT_ERROR_RE.search(obs.detail)):
            # Died loading the checkpoint it resumed from: the next attempt takes the one before it.
            self._bad_checkpoint(jr, Path(a.resumed_from))
            self._say(f"{Path(a.resumed_from).name} failed to load; the next attempt falls back", name, kind="checkpoint")
        d = decide_retry(jr.job.config.retry, jr.attempts - 1, jr.restarts_without_progress, obs.verdict)
        if d.retry:
            jr.restarts_without_progress += 1
            jr.state, jr.retry_at = "waiting", time.time() + d.delay
            self.journal.set_job(name, state="pending", reason=d.reason)
        else:
            jr.state = "failed"
            self.journal.set_job(name, state="failed", reason=d.reason)
        self._say(d.reason, name)

    def _shrink_micro_batch(self, jr: JobRun) -> None:
        """OOM: a smaller micro-batch, more accumulation: the effective batch is unchanged."""
        t = jr.job.config.training
        smaller = smaller_micro_batch(t.batch_size, t.grad_accum)
        if smaller is None:
            return
        before = (t.batch_size, t.grad_accum)
        self._set_micro_batch(jr, *smaller)
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
        if path not in jr.bad_checkpoints:
            jr.bad_checkpoints.add(path)
            self.journal.record_decision(Decision(jr.job.name, "bad_checkpoint", {"path": str(path)}))

    def _kill_job(self, jr: JobRun, why: str, grace: float = 10.0) -> None:
        name = jr.job.name
        if jr.state in ("running", "placing") and jr.current is not None:
            codes = self._release(jr.current, grace=grace, job=name)
            if jr.state == "running":
                a = jr.current
                lost = max(0, a.step - max(jr.last_ckpt_step, 0))
                self.journal.end_attempt(name, a.n, "killed", "killed", codes, a.step, lost, detail=why)
        jr.state = "killed"
        self.journal.set_job(name, state="killed", reason=why)
        self._say(why, name, kind="kill")

    def _kill_all(self, why: str, grace: float = 10.0) -> None:
        for jr in self.jobs.values():
            if jr.state not in ("succeeded", "failed", "skipped", "killed"):
                self._kill_job(jr, why, grace)
        self._say(f"run stopped: {why}")
