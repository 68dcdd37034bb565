"""bin/status, bin/kill and bin/resume from a host other than the driver's: the run is driven from
the head, watched and killed from a worker host (which cannot see the driver's PIDs: each host has
its own PID space), and resumed there, where its new driver then runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.procs import RUN_MARKER
from tests.integration.cluster.jobs import JOB, job_of, two_host_plan

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.timeout(1200)]


def _of_run(host, run: str) -> list[int]:
    """The host's processes that carry the run's marker (read from here, the machine's root)."""
    hit = []
    for pid in host.pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if f"{RUN_MARKER}={run}".encode() in env:
            hit.append(pid)
    return hit


def test_status_kill_and_resume_from_a_worker_host(cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    head, *_, far = cluster.bed.hosts
    run = cluster.launch_detached(head, two_host_plan(tmp_path, steps=600, every=40), runs)
    st = cluster.wait(far, runs, run, lambda st: (job_of(st)["step"] or 0) >= 50, 600, "the job reaching step 50")
    assert st["driver"] == "alive"   # the head's driver, seen from the worker host through its lock
    out = cluster.sl(far, "status", run, "--runs-dir", str(runs))
    assert out.returncode == 3 and JOB in out.stdout, out.stdout + out.stderr   # 3: running

    out = cluster.sl(far, "kill", run, "--runs-dir", str(runs), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    st = cluster.status(far, runs, run)
    assert st["state"] == "killed" and job_of(st)["state"] == "killed", st
    left = {h.name: _of_run(h, run) for h in cluster.bed.hosts}
    assert not any(left.values()), f"processes of the killed run still alive: {left}"

    out = cluster.sl(far, "resume", run, "--runs-dir", str(runs), "--detach", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    st = cluster.wait(head, runs, run, lambda st: st["state"] in ("succeeded", "failed") and st["driver"] is None,
                      900, "the resumed run ending")
    job = job_of(st)
    assert st["state"] == "succeeded", st
    last = job["attempts"][-1]
    assert last["resumed_from"] and last["start_step"] >= 40, last
