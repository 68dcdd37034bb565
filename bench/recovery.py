"""Recovery from a hang: stall -> detection -> kill -> first resumed step, against the timeout.

    PYTHONPATH=. .venv/bin/python bench/recovery.py [--deepspeed] [--timeout 5] [--json OUT]
    (also the `recovery` piece of `python -m bench`)

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
from typing import TYPE_CHECKING, Any

from launcher.atomic import read_jsonl
from launcher.journal import Journal
from launcher.spec import RetrySpec

if TYPE_CHECKING:
    from bench.results import PieceResult

REPO = Path(__file__).resolve().parents[1]
EVERY = 10


def plan(deepspeed: bool, timeout: float, backoff: float | None = 0.0) -> str:
    """backoff None: the plan leaves retry.backoff out, and the job waits what users get by default."""
    retry = "{max_restarts: 2}" if backoff is None else f"{{max_restarts: 2, backoff: {backoff:g}}}"
    common = f"""    resources: {{nodes: 1, gpus_per_node: 2}}
    checkpoint: {{every: {EVERY}, keep: 2}}
    retry: {retry}
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
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode not in (0, 1, 3, 4):   # status exits with the run's state (launcher/exitcodes.py)
        raise subprocess.CalledProcessError(out.returncode, out.args, out.stdout, out.stderr)
    return json.loads(out.stdout)


def first_step_time(run_dir: Path, attempt: int, after_step: int) -> float | None:
    recs = [r for r in read_jsonl(run_dir / "jobs" / "job" / "metrics.jsonl")
            if r.get("attempt", attempt) == attempt and r.get("step", 0) > after_step and "time" in r]
    return min((r["time"] for r in recs), default=None)


def measure(deepspeed: bool, timeout: float, backoff: float | None = 0.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        (Path(tmp) / "plan.yaml").write_text(plan(deepspeed, timeout, backoff))
        out = subprocess.run([sys.executable, "-m", "launcher", "launch", str(Path(tmp) / "plan.yaml"), "--detach",
                              "--runs-dir", str(runs), "--no-dashboard"], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        run_id = out.stdout.split()[1]
        try:
            return observe(runs, deepspeed, timeout) | {"backoff_s": RetrySpec().backoff if backoff is None else backoff,
                                                        "backoff_default": backoff is None}
        except Exception as e:
            # Leave nothing running: the detached driver and its ranks go before the report does.
            log = runs / run_id / "driver.log"
            tail = log.read_text(errors="replace").splitlines()[-3:] if log.exists() else []
            subprocess.run([sys.executable, "-m", "launcher", "kill", run_id, "--runs-dir", str(runs), "--force"],
                           cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
            raise RuntimeError(f"{e}; driver log: {' | '.join(tail)}") from e


def observe(runs: Path, deepspeed: bool, timeout: float) -> dict[str, Any]:
    deadline = time.time() + 600   # a run that never gets there is reported, not waited on forever
    while True:
        st = status(runs)
        j = st["jobs"][0]
        if j["state"] == "running" and (j["step"] or 0) >= 30:
            break
        if time.time() > deadline or st["state"] not in ("pending", "running"):
            raise RuntimeError(f"the job never reached step 30 while running: run {st['state']}, job {j['state']}")
        time.sleep(0.1)
    first = j["attempts"][0]
    stalled = time.time()
    os.kill(first["pids"][1], signal.SIGSTOP)
    # Detection, kill, restart and the rest of the job: well within this unless recovery is stuck.
    after = stalled + timeout + (420 if deepspeed else 180)
    while (st := status(runs))["state"] == "running":
        if time.time() > after:
            job = st["jobs"][0]
            raise RuntimeError(f"no recovery {after - stalled:.0f} s after the stall: job {job['state']}, "
                               f"attempt {len(job['attempts'])}, {job['reason'] or ''}")
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
            "state": st["state"]}


def bench(quick: bool) -> PieceResult:
    """Synthetic job (hang.step 5 s) with no back-off and with the default one (retry.backoff left
    out of the plan, as users get it); full mode also the tiny-Llama ZeRO-2 job (hang.step 8 s)."""
    from bench.results import PieceResult, Row, fmt_s

    cases = [(False, 5.0, 0.0), (False, 5.0, None)] + ([] if quick else [(True, 8.0, 0.0)])
    rows, details = [], {}
    for deepspeed, timeout, backoff in cases:
        r = measure(deepspeed, timeout, backoff)
        t, up, b = r["timeout_s"], r["job_startup_s"], r["backoff_s"]
        tag = f"{r['job']}, hang.step {t:g} s, " + (f"default back-off {b:g} s" if r["backoff_default"] else f"back-off {b:g} s")
        details[tag] = r
        rows += [
            Row(f"hang detected after the stall ({tag})", fmt_s(r["detect_s"], 1), r["detect_s"],
                baseline=f"timeout {t:g} s", target=f"<= timeout + 2 = {t + 2:g} s", ratio=r["detect_s"] / t,
                met=r["detect_s"] <= t + 2, note="a SIGSTOPped rank of a 2-rank job; py-spy stacks are dumped before the kill"),
            Row(f"ranks killed ({tag})", fmt_s(r["kill_done_s"], 1), r["kill_done_s"]),
            Row(f"first resumed step ({tag})", fmt_s(r["resumed_step_s"], 1), r["resumed_step_s"],
                baseline=f"job start-up {up:.1f} s",
                target=f"<= timeout + back-off + start-up + 5 = {t + b + up + 5:.1f} s",
                met=r["resumed_step_s"] <= t + b + up + 5),
            Row(f"steps redone ({tag})", str(r["steps_redone"]), r["steps_redone"],
                target=f"<= checkpoint interval {r['checkpoint_every']}", ratio=r["steps_redone"] / r["checkpoint_every"],
                met=r["steps_redone"] <= r["checkpoint_every"], note=f"run {r['state']} after the restart"),
        ]
    return PieceResult("recovery", rows, details)


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
