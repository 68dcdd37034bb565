"""README's commands on a real finished run, through the bin/ wrappers themselves."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO
from tests.integration.launcher.conftest import driver_pid, start_detached, wait_driver_gone, wait_for

pytestmark = pytest.mark.integration


def bin_(cmd: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "bin" / cmd), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    runs = tmp_path_factory.mktemp("cli") / "runs"
    run = start_detached(REPO / "plans" / "pipeline_synthetic.yaml", runs, "--order", "fifo")
    # The detached driver is not a child of the launching command (which has exited) and has a session of its own.
    drv = psutil.Process(driver_pid(runs, run))
    assert drv.pid != os.getpid() and os.getsid(drv.pid) != os.getsid(0) and os.getsid(drv.pid) == drv.pid
    wait_for(runs, run, lambda st: st["state"] not in ("running", "pending"), timeout=240, what="the run to end")
    wait_driver_gone(runs, run)
    return runs, run


def test_status_logs_report(finished: tuple[Path, str]) -> None:
    runs, run = finished
    out = bin_("status", "--runs-dir", str(runs), "--watch")
    assert out.returncode == 0 and "succeeded" in out.stdout and "stage1_align" in out.stdout
    st = json.loads(bin_("status", run, "--runs-dir", str(runs), "--json").stdout)
    every = bin_("status", run, "--runs-dir", str(runs), "--all")
    assert every.returncode == 0 and all(j["name"] in every.stdout for j in st["jobs"])
    assert st["state"] == "succeeded" and len(st["jobs"]) == 8
    log = bin_("logs", run, "lisa", "--runs-dir", str(runs), "-f")
    assert log.returncode == 0 and "[synthetic] rank 0 attempt 1 starting at step 0/20" in log.stdout
    rep = bin_("report", run, "--runs-dir", str(runs), "--format", "json")
    assert rep.returncode == 0 and json.loads(rep.stdout)["state"] == "succeeded"
    assert (runs / run / "report" / "report.md").is_file()


def test_dry_run_prints_every_job_and_starts_nothing(tmp_path: Path) -> None:
    out = bin_("launch", "plans/smoke.yaml", "--dry-run", "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 0 and "sft_tiny" in out.stdout and "ZeRO-2" in out.stdout
    assert '"train_batch_size": 4' in out.stdout and f"{tmp_path / 'runs'}/<run-id>/jobs/sft_tiny/" in out.stdout
    assert not (tmp_path / "runs").exists()
