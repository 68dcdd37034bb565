"""A run's controller state rebuilt from its journal and from earlier runs (bin/resume).

Finished jobs stay finished; the rest start again from their newest complete checkpoint, attempt
numbers going on from the last one, and every decision the supervisor journalled is honoured
again in order: the micro-batch an OOM chose, checkpoints found broken, learned timeouts, how many
restarts in a row made no progress, and a lost node the next placement must avoid.
"""

from __future__ import annotations

import logging
from pathlib import Path

from launcher.control import changes
from launcher.control.core import Core, JobNeeds
from launcher.control.records import JobRun
from launcher.control.states import JobState
from launcher.journal import Journal
from launcher.layout import RunDir
from launcher.plan import Plan
from launcher.scheduling import estimates
from launcher.scheduling import needs as gpu_needs
from launcher.scheduling.books import Books
from launcher.scheduling.model import Shape
from launcher.scheduling.policy import make as make_policy
from launcher.supervision.policy import Action

log = logging.getLogger("launcher")


def make_core(plan: Plan, rd: RunDir, journal: Journal, books: Books, policy: str,
              memory_backend: str = "host") -> Core:
    """The scheduling core, with durations and GPU memory needs from earlier runs of the same jobs
    where there are any: a job whose need is known and fits beside others is packed."""
    past = estimates.past_journals(rd.root.parent, exclude=rd.root)
    history = estimates.durations_from_journals(past)
    peaks = gpu_needs.measured_peaks([db.parent for db in past], memory_backend) if books.gpu_mib else {}
    jobs = []
    for i, (name, job) in enumerate(plan.jobs.items()):
        r, est = job.config.resources, estimates.initial(job, history)
        shape = Shape(r.nodes, r.gpus_per_node, r.gpu_type)
        need = gpu_needs.need(job, peaks)
        if need.mib is not None and books.could_ever_fit(shape._replace(mib=need.mib)):
            shape = shape._replace(mib=need.mib)
            log.info("%s: packed, needs %s", name, need.describe())
        jobs.append(JobNeeds(name, job.needs, shape, i, est.seconds))
        if est.source == "history":
            log.info("%s: estimated %.0fs from earlier runs", name, est.seconds)
    done = {r["name"]: JobState.SUCCEEDED for r in journal.jobs() if r["state"] == "succeeded"}
    return Core(jobs, books, make_policy(policy), initial=done)


def load_history(jobs: dict[str, JobRun], journal: Journal, core: Core) -> None:
    rows = {r["name"]: r for r in journal.jobs()}
    for name, jr in jobs.items():
        row = rows.get(name)
        if row is None:
            continue
        if row["state"] not in ("succeeded", "pending"):   # succeeded: the core starts it so (make_core)
            journal.set_job(name, state="pending", reason="resumed")
        for a in journal.attempts(name):
            if a["ended"] is None:  # the controller died under this attempt
                journal.end_attempt(name, a["n"], "failed", "lost", {}, row["step"],
                                    detail="the driver stopped while this attempt ran")
        jr.attempts = max((a["n"] for a in journal.attempts(name)), default=0)
        ckpts = [c for c in journal.checkpoints(name) if c["complete"]]
        jr.last_ckpt_step = max((c["step"] for c in ckpts), default=-1)
        _replay(jr, journal, core, newest_ckpt_attempt=max((c["attempt"] for c in ckpts), default=0))


def _replay(jr: JobRun, journal: Journal, core: Core, newest_ckpt_attempt: int) -> None:
    """The job's decisions in the order they were made: the last of each kind wins."""
    name = jr.job.name
    restart_attempt, avoid = 0, ()
    for d in journal.decisions(name):
        if d.kind == "micro_batch":
            changes.set_micro_batch(jr, d.data["batch_size"], d.data["grad_accum"])
        elif d.kind == "bad_checkpoint":
            jr.bad_checkpoints[Path(d.data["path"])] = d.data.get("identity", "")
        elif d.kind == "timeout":
            phase = d.data["phase"]
            jr.learned[phase] = max(d.data["seconds"], jr.learned.get(phase, 0.0))
        elif d.kind == "restart":
            jr.restarts_without_progress = d.data["restarts_without_progress"]
            restart_attempt = d.data["attempt"]
            avoid = tuple(d.data["avoid_nodes"]) if d.data["action"] == Action.RESTART_ELSEWHERE else ()
        elif d.kind == "exclusive":   # a packed attempt outgrew its share: whole GPUs from then on
            core.make_exclusive(name)
        elif d.kind == "give_up":   # a resumed run is a new try: its no-progress count starts again
            jr.restarts_without_progress, restart_attempt, avoid = 0, d.data["attempt"], ()
    if newest_ckpt_attempt > restart_attempt:   # an attempt after the decision saved a checkpoint
        jr.restarts_without_progress = 0
    if avoid and jr.attempts == restart_attempt:   # the restart it decided never began
        core.avoid_nodes(name, avoid)
