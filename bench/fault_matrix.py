"""The supervisor's fault matrix, timed: for each fault, fault -> detected -> killed -> training again.

    PYTHONPATH=. .venv/bin/python bench/fault_matrix.py [--only NAME ...] [--json OUT]
    (also the `faults` piece of `python -m bench`)

Each scenario is a 2-rank synthetic job through the real launcher, detached, with the timeouts a
user would write. The fault's time comes from the job's own clock: the synthetic rank's
faults.jsonl for the faults it injects, the moment this script sent the signal for SIGKILL and
SIGSTOP. Detection and the kill come from the journal's events; "training again" is the resumed
attempt's first new step in metrics.jsonl. Target: detected within the phase timeout + 2 s for a
hang, within 2 s for an exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.recovery import REPO, first_step_time, status
from launcher.atomic import read_jsonl
from launcher.journal import Journal

if TYPE_CHECKING:
    from bench.results import PieceResult

EVERY = 10


@dataclass(frozen=True)
class Scenario:
    name: str
    params: str = ""                  # synthetic params injecting the fault
    hang: str = "{startup: 60, step: 5}"
    signal: int | None = None         # or: this script signals rank 1 at step 30
    timeout_s: float | None = None    # the phase timeout that must expire first (hangs)
    root: bool = False                # needs root (a memory cgroup)


SCENARIOS = [
    Scenario("crash (exit 3)", "crash_at_step: 33"),
    Scenario("SIGKILL of a rank", signal=signal.SIGKILL),
    Scenario("CUDA OOM message", "oom_at_step: 33"),
    Scenario("kernel OOM kill (-9, no log line)", "host_oom_at_step: 33", root=True),
    Scenario("crash while saving", "crash_in_save_at_step: 30"),
    Scenario("hang in training (SIGSTOP)", signal=signal.SIGSTOP, timeout_s=5),
    Scenario("hang in an evaluation", "eval_every: 10, eval_time: 2, hang_in_eval_at_step: 30",
             "{startup: 60, step: 5, eval: 4}", timeout_s=4),
    Scenario("hang in a save", "save_time: 0.5, hang_in_save_at_step: 30", "{startup: 60, step: 5, save: 4}",
             timeout_s=4),
]


def plan(s: Scenario) -> str:
    return f"""name: faultmatrix
jobs:
  job:
    method: synthetic
    resources: {{nodes: 1, gpus_per_node: 2}}
    params: {{steps: 200, step_time: 0.1{', ' + s.params if s.params else ''}}}
    checkpoint: {{every: {EVERY}, keep: 2}}
    retry: {{max_restarts: 2, backoff: 0}}
    hang: {s.hang}
"""


def measure(s: Scenario) -> dict[str, float | int | str | None]:
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        (Path(tmp) / "plan.yaml").write_text(plan(s))
        out = subprocess.run([sys.executable, "-m", "launcher", "launch", str(Path(tmp) / "plan.yaml"), "--detach",
                              "--runs-dir", str(runs), "--no-dashboard"], cwd=REPO, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stdout + out.stderr)
        run_id = out.stdout.split()[1]
        try:
            return observe(runs, s)
        finally:
            subprocess.run([sys.executable, "-m", "launcher", "kill", run_id, "--runs-dir", str(runs), "--force"],
                           cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
            for cg in Path("/sys/fs/cgroup").glob("*/sl-synthetic-oom-*"):
                cg.rmdir()


def observe(runs: Path, s: Scenario) -> dict[str, float | int | str | None]:
    deadline = time.time() + 300
    sent = None
    while (st := status(runs))["state"] in ("pending", "running"):
        j = st["jobs"][0]
        if s.signal is not None and sent is None and j["state"] == "running" and (j["step"] or 0) >= 30:
            os.kill(j["attempts"][0]["pids"][1], s.signal)
            sent = time.time()
        if time.time() > deadline:
            raise RuntimeError(f"{s.name}: still {st['state']} after 300 s")
        time.sleep(0.1)
    run_dir = Path(st["dir"])
    injected = [r["time"] for r in read_jsonl(run_dir / "jobs" / "job" / "faults.jsonl") if r["attempt"] == 1]
    fault = sent if sent is not None else min(injected)
    jn = Journal(run_dir / "run.db", readonly=True)
    try:
        events = jn.events("job")
        detected = next(e for e in events if e["kind"] == "detected")
        killed = next(e["time"] for e in events if e["kind"] == "failure")
        a1, a2 = jn.attempts("job")[:2]
    finally:
        jn.close()
    resumed = first_step_time(run_dir, 2, a2["start_step"] or 0)
    return {"scenario": s.name, "verdict": a1["failure"], "timeout_s": s.timeout_s,
            "detect_s": detected["time"] - fault, "killed_s": killed - fault,
            "training_again_s": (resumed - fault) if resumed else None,
            "steps_redone": (a1["end_step"] or 0) - (a2["start_step"] or 0), "state": st["state"]}


def run(only: list[str] | None = None) -> list[dict[str, float | int | str | None]]:
    out = []
    for s in SCENARIOS:
        if only and not any(o.lower() in s.name.lower() for o in only):
            continue
        if s.root and os.geteuid() != 0:
            out.append({"scenario": s.name, "verdict": "skipped (needs root)"})
            continue
        out.append(measure(s))
    return out


def bench(quick: bool) -> PieceResult:
    from bench.results import PieceResult, Row, fmt_s

    rows, details = [], {}
    for r in run():
        details[str(r["scenario"])] = r
        if "detect_s" not in r:
            continue
        limit = (r["timeout_s"] or 0) + 2
        rows.append(Row(f"{r['scenario']}: detected ({r['verdict']})", fmt_s(r["detect_s"], 1), r["detect_s"],
                        target=f"<= {'timeout + ' if r['timeout_s'] else ''}2 = {limit:g} s", met=r["detect_s"] <= limit,
                        note=f"killed at {r['killed_s']:.1f} s, training again at "
                             f"{r['training_again_s'] or float('nan'):.1f} s, {r['steps_redone']} steps redone "
                             f"(checkpoint every {EVERY}); run {r['state']}"))
    return PieceResult("faults", rows, details)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="scenarios whose name contains one of these")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = run(args.only)
    print(f"{'scenario':38} {'verdict':8} {'timeout':>7} {'detected':>8} {'killed':>7} {'training':>8} {'redone':>6}  run")
    for r in results:
        if "detect_s" not in r:
            print(f"{r['scenario']:38} {r['verdict']}")
            continue
        t = f"{r['timeout_s']:g} s" if r["timeout_s"] else "-"
        again = f"{r['training_again_s']:.1f} s" if r["training_again_s"] else "-"
        print(f"{r['scenario']:38} {r['verdict']:8} {t:>7} {r['detect_s']:6.1f} s {r['killed_s']:5.1f} s {again:>8} "
              f"{r['steps_redone']:>6}  {r['state']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
