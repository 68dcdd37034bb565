"""The rank-kill and hang cases of the fault matrix on a real 2-rank DeepSpeed ZeRO-2 job."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import DATA
from tests.integration.launcher.conftest import job, run_processes, start_detached, wait_driver_gone, wait_for, write_plan

pytestmark = pytest.mark.integration

# Enough steps that the fault lands mid-training: with one OpenMP thread per rank the tiny model
# runs ~30 steps/s here, faster than bin/status polls; a stop during a save is caught by hang.save.
STEPS, EVERY = 240, 20


def _plan(tmp: Path) -> Path:
    return write_plan(tmp, f"""
name: ds-faults
jobs:
  sft:
    method: sft
    model: {{tiny: llama}}
    data: {{train: {DATA / 'sst2_mini.jsonl'}}}
    deepspeed: zero2
    resources: {{nodes: 1, gpus_per_node: 2}}
    training: {{max_steps: {STEPS}, batch_size: 2, lr: 1.0e-3, max_length: 96}}
    checkpoint: {{every: {EVERY}, keep: 2}}
    retry: {{max_restarts: 2, backoff: 0.2}}
    hang: {{startup: 300, step: 8, save: 20}}
""")


def _recovered(runs: Path, run: str, failure: str) -> dict:
    st = wait_for(runs, run, lambda s: s["state"] not in ("running", "pending"), timeout=400, what="the run to end")
    wait_driver_gone(runs, run)
    j = job(st, "sft")
    assert j["state"] == "succeeded" and j["step"] == STEPS, j
    first, last = j["attempts"][0], j["attempts"][-1]
    assert first["failure"] == failure and last["resumed_from"].endswith(f"checkpoint-{last['start_step']}")
    assert first["end_step"] - last["start_step"] <= EVERY
    deadline = time.time() + 15
    while run_processes(run) and time.time() < deadline:
        time.sleep(0.3)
    assert run_processes(run) == []
    return st


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
def test_real_deepspeed_rank_fault_recovers(fault: str, runs: Path, tmp_path: Path) -> None:
    run = start_detached(_plan(tmp_path), runs)
    at = EVERY + 3
    st = wait_for(runs, run, lambda s: (job(s, "sft")["step"] or 0) >= at, timeout=300, what=f"step {at}")
    pid = job(st, "sft")["attempts"][-1]["pids"][1]
    os.kill(pid, signal.SIGKILL if fault == "sigkill" else signal.SIGSTOP)
    st = _recovered(runs, run, "crash" if fault == "sigkill" else "hang")
    if fault == "sigstop":
        log = (Path(st["dir"]) / "jobs" / "sft" / "logs" / "attempt-1" / "rank-1.log").read_text()
        assert "py-spy dump of rank 1" in log
