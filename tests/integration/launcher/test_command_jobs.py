"""`command` jobs: scripts written as a researcher would, knowing nothing of this launcher.

One plan, three scripts side by side on 4 simulated GPUs:
- `envs.py`, torchrun-style: 2 ranks that only read RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR;
  then the same script under real torchrun as a `launcher: single` line (one process for the
  node; torchrun starts the 2 workers from the {nnodes} ... {master_port} it is given);
- `silent.py`: prints nothing for 25 s while it works (CPU busy, a file growing) under a 6 s
  step timeout: it must not be killed;
- `trainer.py`: argparse flags in the HF Trainer's style (--output_dir, --max_steps, --save_steps,
  --resume_from_checkpoint), saving `checkpoint-<step>/` with trainer_state.json last; on its first
  attempt it freezes at step 13 (SIGSTOP on itself: no output, no CPU, no files). The hang must be
  found, and the job restarted from its own checkpoint-10 with the resume flag appended.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from launcher.atomic import read_json
from launcher.journal import Journal
from tests.integration.launcher.conftest import launch, status, write_plan

pytestmark = pytest.mark.integration

ENVS = """
import json, os, sys, time
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")
with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({k: os.environ.get(k) for k in keys}, f)
for i in range(1, 6):
    time.sleep(0.2)
    print(f"step {i}/5", flush=True)
"""

SILENT = """
import os, sys, time
path = os.path.join(sys.argv[1], "work.bin")
end = time.time() + 25
with open(path, "ab") as f:
    while time.time() < end:
        x = sum(i * i for i in range(200_000))   # CPU busy, not a word on stdout
        f.write(b"w" * 64)
        f.flush()
"""

TRAINER = """
import argparse, json, os, signal, time
ap = argparse.ArgumentParser()
ap.add_argument("--output_dir", required=True)
ap.add_argument("--max_steps", type=int, default=30)
ap.add_argument("--save_steps", type=int, default=5)
ap.add_argument("--resume_from_checkpoint")
a = ap.parse_args()
start = 0
if a.resume_from_checkpoint:
    start = json.load(open(os.path.join(a.resume_from_checkpoint, "trainer_state.json")))["global_step"]
    print(f"resumed from {a.resume_from_checkpoint} at step {start}", flush=True)
for step in range(start + 1, a.max_steps + 1):
    time.sleep(0.15)
    print({"loss": round(3.0 / step, 4), "epoch": step / a.max_steps}, flush=True)
    print(f"{step}/{a.max_steps} [00:01<00:02, 6.6it/s]", flush=True)
    if step == 13 and os.environ.get("SL_ATTEMPT") == "1":
        os.kill(os.getpid(), signal.SIGSTOP)   # frozen: a deadlock shows nothing either
    if step % a.save_steps == 0:
        ck = os.path.join(a.output_dir, f"checkpoint-{step}")
        os.makedirs(ck, exist_ok=True)
        open(os.path.join(ck, "model.bin"), "wb").write(b"m" * 1000)
        json.dump({"global_step": step}, open(os.path.join(ck, "trainer_state.json"), "w"))   # last, as HF does
"""


def test_foreign_scripts_run_unchanged_are_watched_and_resumed_from_their_own_checkpoints(tmp_path: Path,
                                                                                        runs: Path) -> None:
    for name, text in {"envs.py": ENVS, "silent.py": SILENT, "trainer.py": TRAINER}.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    # The interpreter named, as a lab names its environment's: `python` would be the caller's PATH's
    plan = write_plan(tmp_path, """
name: command-jobs
defaults:
  method: command
  resources: {nodes: 1, gpus_per_node: 1}
  retry: {max_restarts: 1, backoff: 0}
jobs:
  envs:
    params: {argv: [PY, envs.py, "{dir}/env"]}
    resources: {gpus_per_node: 2}
  line:
    params:
      argv: [PY, -m, torch.distributed.run, --nnodes, "{nnodes}", --node_rank, "{node_rank}",
             --nproc_per_node, "{nproc_per_node}", --master_addr, "{master_addr}", --master_port, "{master_port}",
             envs.py, "{dir}/env"]
      launcher: single
    resources: {gpus_per_node: 2}
  silent:
    params: {argv: [PY, silent.py, "{dir}"]}
    hang: {startup: 6, step: 6}
  trainer:
    params: {argv: [PY, trainer.py, --output_dir, "{dir}/out", --max_steps, "30", --save_steps, "5"]}
    checkpoint: {glob: "out/checkpoint-*", resume_arg: [--resume_from_checkpoint, "{checkpoint}"]}
    hang: {startup: 60, step: 6}
""".replace("PY", sys.executable))
    out = launch(plan, runs, "--simulate-gpus", "4", timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    st = status(runs)
    jobs = {j["name"]: j for j in st["jobs"]}
    assert {n: j["state"] for n, j in jobs.items()} == {"envs": "succeeded", "line": "succeeded",
                                                        "silent": "succeeded", "trainer": "succeeded"}
    run = Path(st["dir"])

    # torchrun's contract, as the script read it
    seen = [read_json(run / "jobs" / "envs" / "env" / f"rank{r}.json") for r in (0, 1)]
    assert [(s["RANK"], s["LOCAL_RANK"], s["WORLD_SIZE"], s["LOCAL_WORLD_SIZE"]) for s in seen] == [
        ("0", "0", "2", "2"), ("1", "1", "2", "2")]
    assert seen[0]["MASTER_ADDR"] and seen[0]["MASTER_PORT"] == seen[1]["MASTER_PORT"]
    assert jobs["envs"]["step"] == 5 and jobs["envs"]["total_steps"] == 5   # read from its "step N/M" lines

    # the launcher line: one process of ours on the node, torchrun's 2 workers under it
    seen = [read_json(run / "jobs" / "line" / "env" / f"rank{r}.json") for r in (0, 1)]
    assert [(s["RANK"], s["LOCAL_RANK"], s["WORLD_SIZE"], s["LOCAL_WORLD_SIZE"]) for s in seen] == [
        ("0", "0", "2", "2"), ("1", "1", "2", "2")]
    j = Journal(run / "run.db", readonly=True)
    line_procs = j.processes("line", 1)
    j.close()
    assert [p.rank for p in line_procs if p.role == "rank"] == [0]
    assert len([p for p in line_procs if p.role == "child"]) >= 3   # torchrun and its two workers, on record
    assert jobs["line"]["step"] == 5

    # the silent worker: one attempt, never judged hung
    assert len(jobs["silent"]["attempts"]) == 1

    # the frozen trainer: a hang, then its own checkpoint-10 handed back through the resume flag
    j = Journal(run / "run.db", readonly=True)
    a1, a2 = j.attempts("trainer")
    detected = [e["message"] for e in j.events("trainer") if e["kind"] == "detected"]
    j.close()
    assert a1["failure"] == "hang" and a2["state"] == "succeeded"
    assert a2["resumed_from"].endswith("checkpoints/checkpoint-10")
    idle = detected[0].split("signals idle: ")[1]   # every signal flat at least the timeout: what a hang needs
    assert {k for k, _ in (x.split() for x in idle.split(", "))} == {"progress", "output", "files", "cpu", "gpu",
                                                                     "heartbeat"}
    # as of the wrapper's last sample, at most one second (its period) before the watch's verdict
    assert all(float(v.rstrip("s")) >= 6 - 1 for _, v in (x.split() for x in idle.split(", ")))
    log2 = (run / "jobs" / "trainer" / "logs" / "attempt-2" / "rank-0.log").read_text()
    assert f"resumed from {run / 'jobs' / 'trainer' / 'out' / 'checkpoint-10'} at step 10" in log2
    result = read_json(run / "jobs" / "trainer" / "result.json")
    assert result["status"] == "succeeded" and result["metrics"]["steps"] == 30
    assert result["metrics"]["final_loss"] == pytest.approx(0.1)
