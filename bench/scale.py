"""Scale: validating and expanding a 1,000-job sweep, and `bin/status` on a run of 1,000 jobs.

    PYTHONPATH=. .venv/bin/python -m bench --only scale

Sweep: a plan whose job `sweep` has a 10 x 10 x 10 matrix of synthetic jobs, between a `prep` job
it needs and a `summary` job that needs all 1,000 children; timed through launcher.plan.load_plan
in-process (imports done) and end to end as `python -m launcher launch PLAN --dry-run`.
Status: a run directory whose journal is written with launcher.journal.Journal's own API (1,000
jobs, each with an attempt and two rank processes; some restarted, some running with metrics,
some pending); timed as `python -m launcher status RUN --json` and the table, end to end, and
status.collect in-process.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import runs
from bench.results import REPO, PieceResult, Row, at_most, fmt_s, median

SWEEP_TARGET_S, STATUS_TARGET_S = 2.0, 1.0


def sweep_plan() -> str:
    vals = {"steps": list(range(10, 20)), "step_time": [round(0.01 * i, 2) for i in range(1, 11)],
            "startup_time": [round(0.1 * i, 1) for i in range(10)]}
    return f"""name: sweep-1000
defaults:
  method: synthetic
  resources: {{nodes: 1, gpus_per_node: 1}}
jobs:
  prep: {{params: {{steps: 5}}}}
  sweep:
    needs: [prep]
    matrix: {json.dumps(vals)}
    name_template: "sweep_{{steps}}_{{step_time}}_{{startup_time}}"
  summary:
    needs: [sweep]
"""


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def cli_s(*args: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=runs.env(), capture_output=True, timeout=300)
    # status exits with the run's state (3: running, as this mid-run journal is); anything else is an error.
    if proc.returncode != 0 and not ("status" in args and proc.returncode in (1, 3, 4)):
        raise subprocess.CalledProcessError(proc.returncode, args, proc.stdout, proc.stderr)
    return time.perf_counter() - t0


def build_run(root: Path, n_jobs: int = 1000) -> Path:
    """A run directory like a driver would leave mid-run: 1,000 jobs written through the Journal API."""
    from launcher.atomic import append_jsonl
    from launcher.journal import Journal, ProcessRecord

    rng = random.Random(0)
    run = root / "scale-1000"
    (run / "jobs").mkdir(parents=True)
    (run / "plan.yaml").write_text("name: scale-1000\n")
    j = Journal(run / "run.db")
    j.create_run(run.name, str(run / "plan.yaml"), {"argv": []}, 1, 0.0, "bench")
    j.set_run(state="running")
    now = time.time()
    names = [f"job_{i:04d}" for i in range(n_jobs)]
    for i, name in enumerate(names):
        needs = rng.sample(names[max(0, i - 20):i], k=min(i, rng.choice([0, 1, 2])))
        j.add_job(name, name.rsplit("_", 1)[0], "sft", needs, 2, i, total_steps=100)
    pid = 100_000
    for i, name in enumerate(names):
        kind = "succeeded" if i < 940 else "running" if i < 980 else "pending"
        if kind == "pending":
            continue
        j.event("info", "waiting for 1 x 2 GPU(s) (attempt 1)", job=name)
        attempts = 2 if i % 20 == 0 else 1   # every 20th job restarted once after a crash
        for n in range(1, attempts + 1):
            node = f"node{i % 4}"
            j.start_attempt(name, n, [{"node": f"{node}-id", "host": node, "gpus": ["0", "1"]}],
                            None if n == 1 else f"/runs/x/jobs/{name}/checkpoints/checkpoint-40", 0 if n == 1 else 40)
            j.add_processes([ProcessRecord(name, n, r, f"{node}-id", pid + r, now, pid) for r in (0, 1)])
            pid += 2
            j.event("info", f"attempt {n} started on {node}", job=name)
            last = n == attempts
            if kind == "running" and last:
                j.set_job(name, step=50, loss=1.5, heartbeat_time=now)
                jd = run / "jobs" / name
                jd.mkdir(parents=True, exist_ok=True)
                for s in range(1, 51):
                    append_jsonl(jd / "metrics.jsonl", {"step": s, "loss": 2.0 - s / 100, "time": now - 50 + s, "attempt": n})
                continue
            j.end_attempt(name, n, "succeeded" if last else "failed", None if last else "crash",
                          {0: 0 if last else 1, 1: 0 if last else -15}, 100 if last else 47, None if last else 7)
        if kind == "succeeded":
            j.set_job(name, state="succeeded", step=100, loss=1.0, heartbeat_time=now)
            j.event("info", "succeeded at step 100", job=name)
    j.close()
    return run


def bench(quick: bool) -> PieceResult:
    from rich.console import Console

    from launcher import status
    from launcher.layout import RunDir
    from launcher.plan import load_plan

    reps = 3 if quick else 5
    rows: list[Row] = []
    d: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        plan = root / "sweep.yaml"
        plan.write_text(sweep_plan())
        n = len(load_plan(plan).jobs)
        d["sweep_jobs"] = n
        d["load_plan_s"] = timed(lambda: load_plan(plan), reps)
        d["dry_run_s"] = [cli_s("-m", "launcher", "launch", str(plan), "--dry-run") for _ in range(2)]
        t = median(d["load_plan_s"])
        rows.append(Row("validate + expand a 1,000-job sweep (load_plan)", fmt_s(t), t, target=f"<= {SWEEP_TARGET_S:g} s",
                        ratio=t / SWEEP_TARGET_S, met=at_most(t, SWEEP_TARGET_S),
                        note=f"{n} jobs: prep -> 10x10x10 synthetic matrix -> summary needing all 1,000; in-process, "
                             f"imports done, median of {reps}"))
        t = median(d["dry_run_s"])
        rows.append(Row("  same, end to end: launch --dry-run", fmt_s(t), t,
                        note="Python start-up, imports, validation and printing the 1,002 expanded jobs"))

        t0 = time.perf_counter()
        run = build_run(root)
        d["build_journal_s"] = time.perf_counter() - t0
        d["import_cli_s"] = [cli_s("-c", "import launcher.cli") for _ in range(reps)]
        d["status_json_s"] = [cli_s("-m", "launcher", "status", str(run), "--json") for _ in range(reps)]
        d["status_table_s"] = [cli_s("-m", "launcher", "status", str(run)) for _ in range(reps)]
        d["status_all_s"] = [cli_s("-m", "launcher", "status", str(run), "--all") for _ in range(reps)]
        rd = RunDir(run)
        d["collect_s"] = timed(lambda: status.collect(rd), reps)
        console = Console(file=io.StringIO(), width=200)
        d["render_s"] = timed(lambda: status.render(status.collect(rd), console), reps)
        d["render_all_s"] = timed(lambda: status.render(status.collect(rd), console, all_jobs=True), reps)
    imp = median(d["import_cli_s"])
    for key, what in (("status_json_s", "bin/status --json, 1,000-job run, end to end"),
                      ("status_table_s", "bin/status (table), 1,000-job run, end to end"),
                      ("status_all_s", "bin/status --all (all 1,000 rows), end to end")):
        t = median(d[key])
        rows.append(Row(what, fmt_s(t), t, baseline=f"start-up+imports {imp:.2f} s", target=f"<= {STATUS_TARGET_S:g} s",
                        ratio=t / STATUS_TARGET_S, met=at_most(t, STATUS_TARGET_S),
                        note=f"median of {reps}; 940 succeeded (every 20th restarted once), 40 running with 50 "
                             "metrics lines each, 20 pending; 2 rank processes per attempt" if key == "status_json_s"
                        else f"lists the running/failed/killed rows, counts the rest (over {status.FOLD_OVER} jobs)"
                        if key == "status_table_s" else "rich lays out 12,000 cells"))
    t = median(d["collect_s"])
    rows.append(Row("  status.collect in-process", fmt_s(t, 3), t, target=f"<= {STATUS_TARGET_S:g} s",
                    met=at_most(t, STATUS_TARGET_S)))
    t = median(d["render_s"])
    rows.append(Row("  collect + table render in-process", fmt_s(t, 3), t))
    t = median(d["render_all_s"])
    rows.append(Row("  collect + table render in-process, --all", fmt_s(t, 3), t))
    return PieceResult("scale", rows, d)
