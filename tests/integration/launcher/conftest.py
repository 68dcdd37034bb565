"""Launcher integration tests run the real CLI (bin/launch, bin/status) with a real local Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO


def launch(plan: Path | str, runs: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "launcher", "launch", str(plan), "--runs-dir", str(runs), "--no-dashboard", *extra]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def status(runs: Path, run: str | None = None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "launcher", "status", "--runs-dir", str(runs), "--json", *([run] if run else [])]
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    if out.returncode not in (0, 1, 3, 4):   # status exits with the run's state (launcher/exitcodes.py)
        raise subprocess.CalledProcessError(out.returncode, argv, out.stdout, out.stderr)
    return json.loads(out.stdout)


def synthetic_plan(params: str = "", *, steps: int, every: int, step_time: float = 0.1,
                   hang: str = "{startup: 60, step: 3}", name: str = "faults") -> str:
    """One 2-rank synthetic job `train`, checkpointing every `every` steps, restarting quickly."""
    return f"""
name: {name}
jobs:
  train:
    method: synthetic
    resources: {{nodes: 1, gpus_per_node: 2}}
    params: {{steps: {steps}, step_time: {step_time}{', ' + params if params else ''}}}
    checkpoint: {{every: {every}, keep: 2}}
    retry: {{max_restarts: 2, backoff: 0.2}}
    hang: {hang}
    training: {{batch_size: 4, grad_accum: 1}}
"""


def write_plan(tmp: Path, text: str) -> Path:
    p = tmp / "plan.yaml"
    p.write_text(text)
    return p


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def start_detached(plan: Path | str, runs: Path, *extra: str) -> str:
    """`bin/launch PLAN --detach`: returns the run id once the detached driver has it on record."""
    out = launch(plan, runs, "--detach", *extra, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.split()[1]


def wait_for(runs: Path, run: str, pred, timeout: float = 180, what: str = "condition") -> dict[str, Any]:
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            st = status(runs, run)
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            st = None
        if st is not None and pred(st):
            return st
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last status: {json.dumps(st, indent=1)[-3000:] if st else None}")


def job(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(j for j in st["jobs"] if j["name"] == name)


def run_processes(run_id: str) -> list[int]:
    """Every live process on this machine carrying the run's marker (none may survive a run)."""
    import psutil
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("SL_RUN_ID") == run_id and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def driver_pid(runs: Path, run: str) -> int:
    from launcher.journal import Journal
    j = Journal(runs / run / "run.db", readonly=True)
    try:
        return int(j.run()["driver_pid"])
    finally:
        j.close()


def wait_driver_gone(runs: Path, run: str, timeout: float = 120) -> None:
    import time
    import psutil
    pid = driver_pid(runs, run)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.3)
    raise AssertionError(f"driver {pid} of {run} still running after {timeout}s")
