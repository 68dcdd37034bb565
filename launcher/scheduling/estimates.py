"""How long a job will take, in seconds: from earlier runs of the same job, then from its own speed.

In order of trust:
1. `speed`: a running attempt's own steps (seconds per step since its first step, times the steps
   left): where a job holds its GPUs until, what reservations are planned around;
2. `history`: the median duration of succeeded first attempts of the same job signature (method,
   model, parameters, training settings, data, width) in earlier runs' journals;
3. `plan`: what the plan says (a synthetic job's steps x step time; else one second per step), a
   ranking only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from launcher.plan import Job
from methods.registry import METHODS

log = logging.getLogger("launcher")
HISTORY_RUNS = 50     # newest run journals read for durations: bounded start-up cost


def signature(job: Job) -> str:
    """Same signature, same work: what makes one job's duration a prediction of another's."""
    c = job.config
    key = {"method": c.method, "model": c.model.model_dump(mode="json") if c.model else None,
           "params": job.method_params, "training": c.training.model_dump(mode="json"),
           "data": {k: v.model_dump(mode="json") for k, v in sorted(job.data.items())},
           "width": c.resources.world_size, "gpu_type": c.resources.gpu_type}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def planned_seconds(job: Job) -> float:
    t = job.config.training
    planned = METHODS[job.config.method].planned_seconds(job.method_params)
    if planned is not None:
        return planned
    return float(t.max_steps if t.max_steps > 0 else 100.0 * t.epochs)


@dataclass(frozen=True)
class Estimate:
    seconds: float
    source: str          # plan | history | speed


def durations_from_journals(dbs: Iterable[Path]) -> dict[str, list[float]]:
    """signature -> durations of its succeeded first attempts (rank start to exit), from past runs."""
    out: dict[str, list[float]] = {}
    for db in dbs:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            try:
                rows = con.execute("SELECT j.signature, a.started, a.ended FROM attempts a JOIN jobs j ON j.name = a.job "
                                   "WHERE a.state = 'succeeded' AND COALESCE(a.start_step, 0) = 0 "
                                   "AND j.signature IS NOT NULL AND a.ended IS NOT NULL").fetchall()
            finally:
                con.close()
        except sqlite3.Error as e:   # an old journal without the column, a run being written: no history from it
            log.debug("no durations from %s: %s", db, e)
            continue
        for sig, started, ended in rows:
            out.setdefault(sig, []).append(ended - started)
    return out


def past_journals(runs_dir: Path, exclude: Path | None = None) -> list[Path]:
    dbs = [p for p in runs_dir.glob("*/run.db") if exclude is None or p.parent != exclude]
    return sorted(dbs, key=lambda p: p.stat().st_mtime, reverse=True)[:HISTORY_RUNS]


def initial(job: Job, history: dict[str, list[float]]) -> Estimate:
    past = history.get(signature(job))
    if past:
        return Estimate(statistics.median(past), "history")
    return Estimate(planned_seconds(job), "plan")


def projected_end(first: tuple[float, int], last: tuple[float, int], total: int | None) -> float | None:
    """When the steps left will be done at the speed since the first step seen: (time, step) pairs."""
    (t0, s0), (t1, s1) = first, last
    if total is None or s1 <= s0 or t1 <= t0:
        return None
    return t1 + (t1 - t0) / (s1 - s0) * max(0, total - s1)
