"""The supervisor's fault matrix on synthetic 2-rank jobs: real processes, real signals.

Every case must end with the job succeeded at its planned step count, the restart and its class
in the journal, no process of the run alive, and at most one checkpoint interval redone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from launcher.atomic import read_json
from tests.helpers import REPO
from tests.integration.launcher.conftest import (driver_pid, job, run_processes, start_detached, status, synthetic_plan,
                                                 wait_driver_gone, wait_for, write_plan)

pytestmark = pytest.mark.integration

STEPS, EVERY = 40, 5


def plan_text(params: str = "", step_time: float = 0.1) -> str:
    return synthetic_plan(params, steps=STEPS, every=EVERY, step_time=step_time)


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _at_step(n: int):
    return lambda st: job(st, "train")["state"] == "running" and (job(st, "train")["step"] or 0) >= n


def _finished(st: dict[str, Any]) -> bool:
    return st["state"] != "running" and st["state"] != "pending"


def _rank_pid(st: dict[str, Any], rank: int) -> int:
    return job(st, "train")["attempts"][-1]["pids"][rank]


def _check_recovered(runs: Path, run: str, failure: str) -> dict[str, Any]:
    st = wait_for(runs, run, _finished, timeout=240, what="the run to finish")
    wait_driver_gone(runs, run)
    j = job(st, "train")
    assert st["state"] == "succeeded" and j["state"] == "succeeded", j
    assert j["step"] == STEPS and j["restarts"] >= 1
    first, last = j["attempts"][0], j["attempts"][-1]
    assert first["failure"] == failure, first
    assert last["resumed_from"] is not None and last["state"] == "succeeded"
    # At most one checkpoint interval redone.
    assert first["end_step"] - last["start_step"] <= EVERY, (first, last)
    assert read_json(Path(st["dir"]) / "jobs" / "train" / "result.json")["status"] == "succeeded"
    deadline = time.time() + 15
    while run_processes(run) and time.time() < deadline:
        time.sleep(0.3)
    assert run_processes(run) == [], "processes of the run survived it"
    return st


def test_sigkill_one_rank(runs: Path, tmp_path: Path) -> None:
    run = start_detached(write_plan(tmp_path, plan_text()), runs)
    st = wait_for(runs, run, _at_step(12), what="step 12")
    # What the agent gave the rank: its run's marker, one OpenMP thread per cpus_per_rank (not the
    # actor's Ray-set count), and the venv's bin first on PATH (the ninja that builds DeepSpeed's ops).
    env = psutil.Process(_rank_pid(st, 1)).environ()
    assert env["SL_RUN_ID"] == run and env["OMP_NUM_THREADS"] == "1" and env["WORLD_SIZE"] == "2"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    os.kill(_rank_pid(st, 1), signal.SIGKILL)
    st = _check_recovered(runs, run, "crash")
    assert job(st, "train")["attempts"][0]["exit_codes"]["1"] == -9


def test_sigstop_one_rank_is_a_hang(runs: Path, tmp_path: Path) -> None:
    run = start_detached(write_plan(tmp_path, plan_text()), runs)
    st = wait_for(runs, run, _at_step(12), what="step 12")
    stopped_at = time.time()
    os.kill(_rank_pid(st, 1), signal.SIGSTOP)
    st = _check_recovered(runs, run, "hang")
    first = job(st, "train")["attempts"][0]
    assert "no progress" in first["detail"]
    assert first["ended"] - stopped_at < 3 + 2 + 15  # timeout + detection slack + stack dump and kill
    log = (Path(st["dir"]) / "jobs" / "train" / "logs" / "attempt-1" / "rank-1.log").read_text()
    assert "py-spy dump of rank 1" in log


def test_oom_halves_the_micro_batch(runs: Path, tmp_path: Path) -> None:
    run = start_detached(write_plan(tmp_path, plan_text("oom_at_step: 12")), runs)
    st = _check_recovered(runs, run, "oom")
    jd = Path(st["dir"]) / "jobs" / "train"
    second = read_json(jd / "job-2.json")["training"]
    assert (second["batch_size"], second["grad_accum"]) == (2, 2)
    from launcher.journal import Journal
    j = Journal(Path(st["dir"]) / "run.db", readonly=True)
    changes = j.attempts("train")[1]["changes"]
    j.close()
    assert '"batch_size": [4, 2]' in changes and '"grad_accum": [1, 2]' in changes


def test_crash_while_saving_falls_back_to_previous_checkpoint(runs: Path, tmp_path: Path) -> None:
    run = start_detached(write_plan(tmp_path, plan_text("crash_in_save_at_step: 15")), runs)
    st = _check_recovered(runs, run, "crash")
    first, second = job(st, "train")["attempts"][:2]
    assert second["resumed_from"].endswith("checkpoint-10") and second["start_step"] == 10


def test_sigkill_node_agent_is_lost_node(runs: Path, tmp_path: Path) -> None:
    # Each rank also starts a child in its own session: the agent's death does not reach it, the sweep must.
    run = start_detached(write_plan(tmp_path, plan_text("spawn_child: true")), runs)
    st = wait_for(runs, run, _at_step(12), what="step 12")
    agent = psutil.Process(_rank_pid(st, 0)).ppid()
    assert "NodeAgent" in " ".join(psutil.Process(agent).cmdline()) or psutil.Process(agent).name().startswith("ray")
    os.kill(agent, signal.SIGKILL)
    _check_recovered(runs, run, "lost")


def test_sigkill_driver_then_resume(runs: Path, tmp_path: Path) -> None:
    run = start_detached(write_plan(tmp_path, plan_text()), runs)
    wait_for(runs, run, _at_step(12), what="step 12")
    os.kill(driver_pid(runs, run), signal.SIGKILL)
    wait_driver_gone(runs, run)
    # Nothing moves until someone resumes it: status says so, and --watch / logs -f return.
    st = status(runs, run)
    assert st["state"] == "running" and st["driver"] == "gone"
    assert f"driver gone: bin/resume {run}" in _cli("status", run, "--runs-dir", str(runs)).stdout
    assert _cli("status", run, "--runs-dir", str(runs), "--watch", timeout=30).returncode == 4   # interrupted
    assert _cli("logs", run, "train", "--runs-dir", str(runs), "-f", timeout=30).returncode == 0
    out = _cli("resume", run, "--runs-dir", str(runs))
    assert out.returncode == 0, out.stdout + out.stderr
    _check_recovered(runs, run, "lost")


def test_bin_kill_then_resume(runs: Path, tmp_path: Path) -> None:
    run = start_detached(write_plan(tmp_path, plan_text()), runs)
    wait_for(runs, run, _at_step(12), what="step 12")
    out = _cli("kill", run, "--runs-dir", str(runs))
    assert out.returncode == 0, out.stdout + out.stderr
    st = status(runs, run)
    assert st["state"] == "killed" and job(st, "train")["state"] == "killed"
    wait_driver_gone(runs, run)
    assert run_processes(run) == []
    out = _cli("resume", run, "--runs-dir", str(runs))
    assert out.returncode == 0, out.stdout + out.stderr
    _check_recovered(runs, run, "killed")


def test_secrets_reach_the_ranks_again_after_a_resume(runs: Path, tmp_path: Path, monkeypatch) -> None:
    """Issue 11: `${env:HF_TOKEN}` in the plan, driver SIGKILLed, bin/resume with the variable set:
    the resumed ranks hold the token itself (they held `***`, read from the redacted plan copy), and
    neither plan.yaml nor the journal holds it."""
    secret = "hf_resume_" + os.urandom(4).hex()
    monkeypatch.setenv("HF_TOKEN", secret)
    # Long enough that attempt 2 is still running when its environment is read: the orphaned rank
    # of attempt 1 trains on until bin/resume sweeps it, so attempt 2 may resume near the end.
    plan = write_plan(tmp_path, """
name: secrets
jobs:
  train:
    method: synthetic
    resources: {nodes: 1, gpus_per_node: 1}
    params: {steps: 2000, step_time: 0.2}
    checkpoint: {every: 5, keep: 2}
    env: {HF_TOKEN: "${env:HF_TOKEN}"}
    hang: {startup: 60, step: 5}
""")
    run = start_detached(plan, runs)
    st = wait_for(runs, run, _at_step(6), what="step 6")
    assert psutil.Process(_rank_pid(st, 0)).environ()["HF_TOKEN"] == secret
    os.kill(driver_pid(runs, run), signal.SIGKILL)
    wait_driver_gone(runs, run)
    out = _cli("resume", run, "--runs-dir", str(runs), "--detach")
    assert out.returncode == 0, out.stdout + out.stderr
    # Attempt 2's row exists from its start request (state starting, no pids yet): wait until it runs.
    st = wait_for(runs, run, lambda s: len(job(s, "train")["attempts"]) >= 2 and _at_step(12)(s)
                  and job(s, "train")["attempts"][-1]["state"] == "running", what="attempt 2 running")
    assert psutil.Process(_rank_pid(st, 0)).environ()["HF_TOKEN"] == secret
    rd = Path(st["dir"])
    assert secret not in (rd / "plan.yaml").read_text()
    assert all(secret.encode() not in p.read_bytes() for p in rd.glob("run.db*"))   # the journal (and a rollback journal, if one is left)
    _cli("kill", run, "--runs-dir", str(runs))
    wait_driver_gone(runs, run)


def test_two_resumes_at_once_one_drives(runs: Path, tmp_path: Path) -> None:
    """Issue 11: two `bin/resume` of one dead-driver run started together: the driver lock lets one
    drive it; the other is refused at once, before it sweeps or starts anything."""
    run = start_detached(write_plan(tmp_path, plan_text()), runs)
    wait_for(runs, run, _at_step(12), what="step 12")
    os.kill(driver_pid(runs, run), signal.SIGKILL)
    wait_driver_gone(runs, run)
    argv = [sys.executable, "-m", "launcher", "resume", run, "--runs-dir", str(runs)]
    both = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in both]
    codes = sorted(p.returncode for p in both)
    assert codes == [0, 2], outs
    refused = next(err for p, (_, err) in zip(both, outs) if p.returncode == 2)
    assert "another driver holds" in refused and "driver.lock" in refused
    st = _check_recovered(runs, run, "lost")
    assert [a["n"] for a in job(st, "train")["attempts"]] == [1, 2]   # one driver: no attempt started twice


def test_oom_decision_survives_a_resume(runs: Path, tmp_path: Path) -> None:
    """Issue 11: the OOM's smaller micro-batch lived in the driver's memory only; a resumed driver
    went back to the plan's batch and met the same OOM. It is a journalled decision now, replayed."""
    plan = write_plan(tmp_path, plan_text("oom_at_step: 12, fault_attempts: [1]", step_time=0.3))
    run = start_detached(plan, runs)
    wait_for(runs, run, lambda s: len(job(s, "train")["attempts"]) >= 2 and _at_step(14)(s), what="attempt 2")
    os.kill(driver_pid(runs, run), signal.SIGKILL)
    wait_driver_gone(runs, run)
    out = _cli("resume", run, "--runs-dir", str(runs))
    assert out.returncode == 0, out.stdout + out.stderr
    st = status(runs, run)
    jd = Path(st["dir"]) / "jobs" / "train"
    third = read_json(jd / "job-3.json")["training"]
    assert (third["batch_size"], third["grad_accum"]) == (2, 2)
    assert job(st, "train")["state"] == "succeeded"


def _writable_memory_cgroup() -> bool:
    from launcher import oomkill
    return os.geteuid() == 0 and any(kind == "cgroup" and "memory" in opts or kind == "cgroup2"
                                     for _, kind, opts in oomkill._mounts())


@pytest.mark.skipif(not _writable_memory_cgroup(), reason="needs root and a memory cgroup (a real kernel OOM kill)")
def test_a_kernel_oom_kill_is_an_oom_and_shrinks_the_micro_batch(runs: Path, tmp_path: Path) -> None:
    """Rank 0 joins a 256 MiB memory cgroup and allocates until the kernel's OOM killer ends it:
    exit -9, no log line. It is classified by the cgroup's oom_kill counter, not as a crash."""
    run = start_detached(write_plan(tmp_path, plan_text("host_oom_at_step: 12")), runs)
    try:
        st = _check_recovered(runs, run, "oom")
    finally:
        for cg in Path("/sys/fs/cgroup").glob("*/sl-synthetic-oom-*"):
            cg.rmdir()
    first = job(st, "train")["attempts"][0]
    assert "killed by the kernel's OOM killer" in first["detail"] and first["exit_codes"]["0"] == -9, first
    second = read_json(Path(st["dir"]) / "jobs" / "train" / "job-2.json")["training"]
    assert (second["batch_size"], second["grad_accum"]) == (2, 2)


def test_a_checkpoint_that_fails_to_load_is_found_by_its_manifest_and_skipped(runs: Path, tmp_path: Path) -> None:
    """checkpoint-15 is garbled in place (sizes still match the manifest) and attempt 1 crashes at
    17. Attempt 2 dies loading it, its log ending in a dozen lines of teardown noise; reading the
    checkpoint in full finds state.json broken, and attempt 3 resumes from checkpoint-10."""
    run = start_detached(write_plan(tmp_path, plan_text("corrupt_checkpoint_at_step: 15, crash_at_step: 17")), runs)
    st = wait_for(runs, run, _finished, timeout=240, what="the run to finish")
    wait_driver_gone(runs, run)
    j = job(st, "train")
    assert st["state"] == "succeeded" and j["step"] == STEPS, j
    a1, a2, a3 = j["attempts"]
    assert a1["failure"] == "crash" and a2["failure"] == "crash"
    assert a2["resumed_from"].endswith("checkpoint-15") and a3["resumed_from"].endswith("checkpoint-10"), j
    from launcher.journal import Journal
    jr = Journal(Path(st["dir"]) / "run.db", readonly=True)
    try:
        events = [e["message"] for e in jr.events("train")]
        bad = [d.data["path"] for d in jr.decisions("train") if d.kind == "bad_checkpoint"]
    finally:
        jr.close()
    assert any("checkpoint-15 is broken (state.json cannot be read: " in m for m in events), events
    assert [Path(b).name for b in bad] == ["checkpoint-15"]
    assert run_processes(run) == []
