"""Run status from the journal: the JSON contract for scripts and the table for people.

Reads run.db read-only, so it works while the driver is writing and after the run ended.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from launcher import driver_lock, heartbeat
from launcher.journal import Journal
from launcher.layout import RunDir


def _tail_records(path: Path, n: int = 30) -> list[dict[str, Any]]:
    """The last n JSON lines of a file, reading only its end (metrics files grow for hours)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 32 * 1024))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    if size > 32 * 1024:
        lines = lines[1:]  # the first line read is probably cut
    out = []
    for line in lines[-n:]:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def speed(rd: RunDir, job: str, step: int, total: int | None) -> tuple[float | None, float | None]:
    """(steps per second over the recent metrics, seconds left) for a running job."""
    recs = [r for r in _tail_records(rd.job(job).metrics) if "step" in r and "time" in r]
    if len(recs) < 2 or recs[-1]["time"] <= recs[0]["time"]:
        return None, None
    rate = (recs[-1]["step"] - recs[0]["step"]) / (recs[-1]["time"] - recs[0]["time"])
    if rate <= 0:
        return None, None
    return rate, ((total - step) / rate if total else None)


def _loads(s: str | None, default: Any) -> Any:
    return json.loads(s) if s else default


def collect(rd: RunDir) -> dict[str, Any]:
    """{"run", "dir", "state", "jobs": [{"name", "method", "state", "step", "total_steps", "attempts": [...]}]}"""
    j = Journal(rd.db, readonly=True)
    try:
        run = j.run()
        attempts: dict[str, list[dict[str, Any]]] = {}
        pids: dict[tuple[str, int], list[int]] = {}
        for p in j.processes():
            if p.role == "rank":
                pids.setdefault((p.job, p.attempt), []).append(p.pid)
        for a in j.attempts():
            attempts.setdefault(a["job"], []).append({
                "n": a["n"], "state": a["state"], "started": a["started"], "ended": a["ended"],
                "placement": _loads(a["placement"], []), "pids": pids.get((a["job"], a["n"]), []),
                "failure": a["failure"], "resumed_from": a["resumed_from"], "exit_codes": _loads(a["exit_codes"], {}),
                "start_step": a["start_step"], "end_step": a["end_step"], "lost_steps": a["lost_steps"],
                "detail": a["detail"],
            })
        jobs = []
        for row in j.jobs():
            att = attempts.get(row["name"], [])
            rate, eta = speed(rd, row["name"], row["step"], row["total_steps"]) if row["state"] == "running" else (None, None)
            jobs.append({
                "steps_per_s": rate, "eta_s": eta,
                "signals": signals(rd, row["name"]) if row["state"] == "running" else None,
                "name": row["name"], "method": row["method"], "state": row["state"], "step": row["step"],
                "total_steps": row["total_steps"], "loss": row["loss"], "needs": _loads(row["needs"], []),
                "world_size": row["world_size"], "reason": row["reason"], "restarts": max(0, len(att) - 1),
                "heartbeat_time": row["heartbeat_time"], "attempts": att,
            })
        return {"run": run["run_id"], "dir": str(rd.root), "state": run["state"], "created": run["created"],
                "ended": run["ended"], "plan": run["plan_file"], "driver": driver_state(rd, run["state"]), "jobs": jobs}
    finally:
        j.close()


def signals(rd: RunDir, job: str) -> dict[int, dict[str, float]] | None:
    """A command job's ranks, as their last heartbeats say: seconds since each activity signal
    (output, files, cpu, ...) last moved. None for jobs whose ranks report steps themselves."""
    out = {}
    for path in sorted(rd.job(job).heartbeats.glob("rank-*.json")):
        hb = heartbeat.read(path)
        if hb is not None and hb.signals:
            out[hb.rank] = hb.signals
    return out or None


def signals_note(signals: dict[int, dict[str, float]] | None) -> str:
    """The table's word on a running command job: the rank whose freshest signal is oldest (the one
    a hang verdict would be about), its signals from most to least recently moved."""
    if not signals:
        return ""
    rank, idle = max(signals.items(), key=lambda kv: (min(kv[1].values(), default=0.0), -kv[0]))
    return f"idle (rank {rank}): " + ", ".join(f"{k} {v:.0f}s" for k, v in sorted(idle.items(), key=lambda kv: kv[1]))


def driver_state(rd: RunDir, state: str) -> str | None:
    """For a run the journal calls running: "alive" while a driver holds its lock, "gone" when none
    does (SIGKILLed, its machine rebooted: only bin/resume continues it). None otherwise, and for
    runs older than the lock."""
    if state not in ("running", "pending") or not rd.driver_lock.exists():
        return None
    return "alive" if driver_lock.is_held(rd.driver_lock) else "gone"


def is_over(st: dict[str, Any]) -> bool:
    """Nothing more will happen to this run without a person: it ended, or its driver is gone."""
    return st["state"] not in ("running", "pending") or st.get("driver") == "gone"


def _placement(att: dict[str, Any] | None) -> tuple[str, str]:
    if not att or not att["placement"]:
        return "-", "-"
    nodes = ",".join(p.get("host", p["node"][:8]) for p in att["placement"])
    gpus = ";".join(",".join(p["gpus"]) for p in att["placement"])
    return nodes, gpus


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


STATE_STYLE = {"succeeded": "green", "failed": "red", "running": "cyan", "skipped": "yellow", "killed": "magenta"}


def console_for_stdout() -> Console:
    # Not a terminal (a log, a pipe): rich would squeeze the table into 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=200)


# A sweep of hundreds of jobs: the rows a researcher acts on (running, failed, killed) stay,
# finished and waiting ones become counts; a 1,000-row table scrolls away and takes ~1 s to draw.
FOLD_OVER = 50
FOLDED_STATES = ("succeeded", "pending", "skipped")


def shown_jobs(jobs: list[dict[str, Any]], all_jobs: bool = False) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The jobs the table lists, and how many of each state it folded into the caption."""
    if all_jobs or len(jobs) <= FOLD_OVER:
        return jobs, {}
    folded: dict[str, int] = {}
    for job in jobs:
        if job["state"] in FOLDED_STATES:
            folded[job["state"]] = folded.get(job["state"], 0) + 1
    return [j for j in jobs if j["state"] not in FOLDED_STATES], folded


def table(st: dict[str, Any], all_jobs: bool = False) -> Table:
    took = (st["ended"] or time.time()) - st["created"]
    state = st["state"] + (f", driver gone: bin/resume {st['run']}" if st.get("driver") == "gone" else "")
    # Text, not a str: rich would read "[running]" as markup and drop it.
    t = Table(title=Text(f"run {st['run']}  [{state}]  {took:.0f}s"), title_justify="left")
    for col in ("job", "method", "state", "attempt", "step", "loss", "steps/s", "ETA", "node", "GPUs", "restarts", "note"):
        t.add_column(col, no_wrap=col not in ("note",))
    jobs, folded = shown_jobs(st["jobs"], all_jobs)
    for job in jobs:
        last = job["attempts"][-1] if job["attempts"] else None
        node, gpus = _placement(last)
        step = f"{job['step']}/{job['total_steps']}" if job["total_steps"] else str(job["step"] or "-")
        cells = [job["name"], job["method"], Text(job["state"], style=STATE_STYLE.get(job["state"], "")),
                 str(last["n"]) if last else "-", step, f"{job['loss']:.4f}" if job["loss"] is not None else "-",
                 f"{job['steps_per_s']:.2f}" if job["steps_per_s"] else "-",
                 _duration(job["eta_s"]) if job["eta_s"] is not None else "-", node, gpus, str(job["restarts"]),
                 "; ".join(filter(None, [job["reason"], signals_note(job.get("signals"))]))]
        # Text cells: plan values and reasons may contain [brackets] that rich would read as markup.
        t.add_row(*[c if isinstance(c, Text) else Text(c) for c in cells])
    t.caption = f"dir: {st['dir']}"
    if folded:
        counts = ", ".join(f"{n} {state}" for state, n in folded.items())
        t.caption += f"\nnot listed: {counts} of {len(st['jobs'])} jobs (--all lists every job)"
    t.caption_justify = "left"
    return t


def render(st: dict[str, Any], console: Console | None = None, all_jobs: bool = False) -> None:
    (console or console_for_stdout()).print(table(st, all_jobs))


def gpu_hours(jobs: list[dict[str, Any]], now: float) -> float:
    """GPU-hours the run has held: each attempt's wall time (to now while it runs) times its GPUs."""
    total = 0.0
    for job in jobs:
        for a in job["attempts"]:
            if a.get("started") is None:
                continue
            gpus = sum(len(p.get("gpus") or []) for p in a.get("placement") or [])
            total += max(0.0, (a["ended"] or now) - a["started"]) * gpus
    return total / 3600.0


@dataclass(frozen=True)
class RunEta:
    seconds: float | None   # None: no running job has a rate yet
    waiting: int            # jobs not started yet: their time is not in `seconds` (a lower bound then)


def run_eta(jobs: list[dict[str, Any]]) -> RunEta:
    """When the running jobs should be done (the slowest one's ETA); jobs still pending have no
    speed to go by, so with any of them the ETA is a lower bound and says how many wait."""
    running = [j for j in jobs if j["state"] == "running"]
    waiting = sum(1 for j in jobs if j["state"] == "pending")
    etas = [j["eta_s"] for j in running if j.get("eta_s") is not None]
    known = bool(running) and len(etas) == len(running)
    return RunEta(max(etas) if known else None, waiting)


def watch_summary(st: dict[str, Any], now: float) -> str:
    eta = run_eta(st["jobs"])
    if st["state"] not in ("running", "pending"):
        eta_text = "-"
    elif eta.seconds is None:
        eta_text = "unknown (no speed yet)"
    else:
        eta_text = (">= " if eta.waiting else "") + _duration(eta.seconds)
    if eta.waiting and st["state"] in ("running", "pending"):
        eta_text += f" ({eta.waiting} job{'s' if eta.waiting > 1 else ''} not started)"
    return f"GPU-hours {gpu_hours(st['jobs'], st['ended'] or now):.3f}   run ETA {eta_text}"


def _watch_table(st: dict[str, Any], all_jobs: bool) -> Table:
    t = table(st, all_jobs)
    t.caption = watch_summary(st, time.time()) + "\n" + str(t.caption)
    return t


def watch(rd: RunDir, interval: float = 2.0, all_jobs: bool = False) -> None:
    """A live table until the run ends (Ctrl-C leaves it, the run goes on)."""
    from rich.live import Live

    with Live(_watch_table(collect(rd), all_jobs), console=console_for_stdout(), refresh_per_second=4) as live:
        while True:
            st = collect(rd)
            live.update(_watch_table(st, all_jobs))
            if is_over(st):
                return
            time.sleep(interval)
