"""Recovery from a hang: stall -> detection -> kill -> first resumed step, against the timeout.

    PYTHONPATH=. .venv/bin/python bench/recovery.py [--deepspeed] [--timeout 5] [--json OUT]

A 2-rank job (synthetic by default; --deepspeed: the tiny-Llama SFT under ZeRO-2) runs through
the real launcher, detached; at step 30 one rank gets SIGSTOP (a hang no exit code reveals).
Times come from the journal (detection, kill done), the resumed attempt's heartbeats/metrics
(first step) and the checkpoint it resumed from (steps redone vs. the checkpoint interval).
Targets: detection <= timeout + 2 s; resumed training <= timeout + the job's own start-up + 5 s.
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
from pathlib import Path
from typing import Any

from launcher.atomic import read_jsonl
from launcher.journal import Journal

REPO = Path(__file__).resolve().parents[1]
EVERY = 10


def plan(deepspeed: bool, timeout: float) -> str:
    common = f"""    resources: {{nodes: 1, gpus_per_node: 2}}
    checkpoint: {{every: {EVERY}, keep: 2}}
    retry: {{max_restarts: 2, backoff: 0}}
    hang: {{startup: 300, step: {timeout}}}
"""
    if deepspeed:
        return f"""name: recovery
jobs:
  job:
    method: sft
    model: {{tiny: llama}}
    data: {{train: {REPO / 'plans/data/sst2_mini.jsonl'}}}
    deepspeed: zero2
    training: {{max_steps: 80, batch_size: 2, max_length: 96}}
{common}"""
    return f"""name: recovery
jobs:
  job:
    method: synthetic
    params: {{steps: 120, step_time: 0.1}}
{common}"""


def status(runs: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "launcher", "status", "--runs-dir", str(runs), "--json"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def first_step_time(run_dir: Path, attempt: int, after_step: int) -> float | None:
    recs = [r for r in read_jsonl(run_dir / "jobs" / "job" / "metrics.jsonl")
            if r.get("attempt", attempt) == attempt and r.get("step", 0) > after_step and "time" in r]
    return min((r["time"] for r in recs), default=None)


def measure(deepspeed: bool, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        (Path(tmp) / "plan.yaml").write_text(plan(deepspeed, timeout))
        out = subprocess.run([sys.executable, "-m", "launcher", "launch", str(Path(tmp) / "plan.yaml"), "--detach",
                              "--runs-dir", str(runs), "--no-dashboard"], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        while True:
            st = status(runs)
            j = st["jobs"][0]
            if j["state"] == "running" and (j["step"] or 0) >= 30:
                break
            time.sleep(0.1)
        first = j["attempts"][0]
        startup = None
        stalled = time.time()
        os.kill(first["pids"][1], signal.SIGSTOP)
        while status(runs)["state"] == "running":
            time.sleep(0.5)
        run_dir = Path(st["dir"])
        jn = Journal(run_dir / "run.db", readonly=True)
        detected = next(e["time"] for e in jn.events("job") if e["kind"] == "detected")
        killed = next(e["time"] for e in jn.events("job") if e["kind"] == "failure")
        a1, a2 = jn.attempts("job")[:2]
        jn.close()
        resumed = first_step_time(run_dir, 2, a2["start_step"])
        # The job's own start-up: attempt 1 from its start to its first step.
        startup = first_step_time(run_dir, 1, 0) - a1["started"]
        return {"job": "sft-zero2-tiny-llama" if deepspeed else "synthetic", "timeout_s": timeout,
                "detect_s": detected - stalled, "kill_done_s": killed - stalled, "resumed_step_s": resumed - stalled,
                "job_startup_s": startup, "steps_redone": a1["end_step"] - a2["start_step"], "checkpoint_every": EVERY,
                "state": status(runs)["state"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deepspeed", action="store_true")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    r = measure(args.deepspeed, args.timeout)
    t = r["timeout_s"]
    print(f"recovery from a SIGSTOPped rank ({r['job']}, hang.step = {t:.0f} s, 2 ranks), seconds after the stall:")
    print(f"  detected          {r['detect_s']:6.1f}   target <= timeout + 2 = {t + 2:.1f}")
    print(f"  killed            {r['kill_done_s']:6.1f}   (stacks dumped with py-spy first)")
    print(f"  first new step    {r['resumed_step_s']:6.1f}   target <= timeout + start-up + 5 = "
          f"{t + r['job_startup_s'] + 5:.1f} (job start-up {r['job_startup_s']:.1f})")
    print(f"  steps redone      {r['steps_redone']:6d}   (checkpoint every {r['checkpoint_every']}); run {r['state']}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
