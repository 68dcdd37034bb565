"""One job's trouble stays that job's: a rank that cannot be spawned, a kill while starting, a full
disk. Real Ray, real processes; each case ends with the journal consistent and nothing alive."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.journal import Journal
from tests.helpers import REPO
from tests.integration.launcher.conftest import (job, launch, run_processes, start_detached, status, wait_driver_gone,
                                                 wait_for, write_plan)

pytestmark = pytest.mark.integration


def _cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def two_jobs(a_params: str = "", b_needs: str = "[]", max_restarts: int = 0, a_steps: int = 20,
             a_step_time: float = 0.1) -> str:
    return f"""
name: isolation
jobs:
  a:
    method: synthetic
    resources: {{nodes: 1, gpus_per_node: 2}}
    params: {{steps: {a_steps}, step_time: {a_step_time}{', ' + a_params if a_params else ''}}}
    checkpoint: {{every: 5, keep: 2}}
    retry: {{max_restarts: {max_restarts}, backoff: 0.2}}
    hang: {{startup: 60, step: 5}}
  b:
    method: synthetic
    needs: {b_needs}
    resources: {{nodes: 1, gpus_per_node: 2}}
    params: {{steps: 20, step_time: 0.1}}
    checkpoint: {{every: 5, keep: 2}}
    hang: {{startup: 60, step: 5}}
"""


def test_a_rank_that_cannot_be_spawned_fails_its_job_and_the_run_goes_on(runs: Path, tmp_path: Path) -> None:
    """Job a's rank log path is a directory, so the agent's spawn raises IsADirectoryError (it came
    back as a RayTaskError and ended the whole run); now a fails with the reason and b still runs."""
    run_id = "isolation-spawn"
    (runs / run_id / "jobs" / "a" / "logs" / "attempt-1" / "rank-0.log").mkdir(parents=True)
    out = launch(write_plan(tmp_path, two_jobs()), runs, "--run-id", run_id)
    assert out.returncode == 1, out.stdout + out.stderr
    st = status(runs, run_id)
    a, b = job(st, "a"), job(st, "b")
    assert st["state"] == "failed" and a["state"] == "failed" and b["state"] == "succeeded", (a, b)
    assert a["attempts"][0]["failure"] == "crash" and "IsADirectoryError" in a["attempts"][0]["detail"], a
    assert run_processes(run_id) == []


def test_bin_kill_while_starting_frees_the_gpus_for_the_next_job(runs: Path, tmp_path: Path) -> None:
    """Job a is killed while its agent is still starting the ranks (a 15 s slow start): its agent,
    placement group and ranks must go, or b, waiting for the same 2 GPUs, waits forever."""
    env = dict(os.environ, SL_FAULT_AGENT_START_DELAY_S="15")
    out = subprocess.run([sys.executable, "-m", "launcher", "launch", str(write_plan(tmp_path, two_jobs())),
                          "--runs-dir", str(runs), "--no-dashboard", "--detach", "--order", "fifo"],
                         cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    run = out.stdout.split()[1]
    wait_for(runs, run, lambda st: any(at["state"] == "starting" for at in job(st, "a")["attempts"]),
             what="job a starting")
    killed = _cli("kill", run, "a", "--runs-dir", str(runs))
    assert killed.returncode == 0, killed.stdout + killed.stderr
    st = wait_for(runs, run, lambda s: s["state"] not in ("running", "pending"), timeout=240, what="the run to end")
    wait_driver_gone(runs, run)
    a, b = job(st, "a"), job(st, "b")
    assert a["state"] == "killed" and a["attempts"][0]["state"] == "killed", a
    assert b["state"] == "succeeded", b
    assert run_processes(run) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs to fill")
def test_a_full_disk_ends_the_run_consistently_and_resume_finishes_it(runs: Path, tmp_path: Path) -> None:
    """The runs directory is a 96 MiB tmpfs, filled while the job trains: the ranks cannot write,
    the journal may not either. The run must end `failed` on record (not `running` with no driver),
    no process left; with space freed, bin/resume finishes the job from its checkpoint."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mnt)], check=True)
    try:
        runs = mnt / "runs"
        run = start_detached(write_plan(tmp_path, two_jobs(b_needs="[a]", a_steps=400, a_step_time=0.05)), runs)
        wait_for(runs, run, lambda st: (job(st, "a")["step"] or 0) >= 30, what="job a at step 30")
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        wait_driver_gone(runs, run, timeout=300)
        j = Journal(runs / run / "run.db", readonly=True)
        try:
            final = j.run()["state"]
            rows = {r["name"]: r for r in j.jobs()}
            open_attempts = [a for a in j.attempts() if a["ended"] is None]
        finally:
            j.close()
        assert final == "failed", final
        assert rows["a"]["state"] == "failed" and rows["b"]["state"] in ("skipped", "failed", "pending"), dict(rows["a"])
        assert open_attempts == []
        assert run_processes(run) == []
        filler.unlink()
        out = _cli("resume", run, "--runs-dir", str(runs))
        assert out.returncode == 0, out.stdout + out.stderr
        st = status(runs, run)
        assert st["state"] == "succeeded" and job(st, "a")["step"] == 400 and job(st, "b")["state"] == "succeeded"
        assert job(st, "a")["attempts"][-1]["resumed_from"] is not None
    finally:
        deadline = time.time() + 30
        while subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0 and time.time() < deadline:
            time.sleep(1)


def test_a_slow_release_of_one_job_does_not_delay_another_jobs_hang_verdict(runs: Path, tmp_path: Path) -> None:
    """Job a's rank 0 crashes at step 3 and its rank 1 ignores SIGTERM, so releasing a takes the
    whole 10 s grace. Job b stalls at step 5 under a 3 s step timeout. b's hang must be judged while
    a is still being released (the loop used to block in a's release, and b's verdict came after)."""
    plan = """
name: slowrelease
jobs:
  a:
    method: synthetic
    resources: {nodes: 1, gpus_per_node: 2}
    params: {steps: 300, step_time: 0.1, crash_at_step: 3, ignore_sigterm: true, fault_ranks: [0]}
    retry: {max_restarts: 0}
    hang: {startup: 60, step: 30}
  b:
    method: synthetic
    resources: {nodes: 1, gpus_per_node: 1}
    params: {steps: 30, step_time: 0.1, hang_at_step: 5}
    retry: {max_restarts: 0}
    hang: {startup: 60, step: 3}
"""
    out = launch(write_plan(tmp_path, plan), runs, "--run-id", "slowrelease", "--simulate-gpus", "3")
    assert out.returncode == 1, out.stdout + out.stderr
    j = Journal(runs / "slowrelease" / "run.db", readonly=True)
    try:
        b_hang = next(e["time"] for e in j.events("b") if e["kind"] == "detected")
        a_end = next(at["ended"] for at in j.attempts("a"))
        a_crash = next(e["time"] for e in j.events("a") if e["kind"] == "detected")
    finally:
        j.close()
    assert a_crash < b_hang < a_end, (a_crash, b_hang, a_end)
