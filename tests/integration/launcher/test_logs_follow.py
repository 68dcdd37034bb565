"""bin/logs on a real run whose rank 0 crashes: -f started during attempt 1 goes on into attempt 2
after a banner and returns when the job is over; --all-ranks, --driver and --agent. One run for
all of it: a Ray start is the slow part on a shared 2-core machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.integration.launcher.conftest import job, start_detached, status, synthetic_plan, wait_driver_gone, wait_for, \
    write_plan

pytestmark = pytest.mark.integration

STEPS, CRASH = 40, 24
BANNER = re.compile(r"^===== attempt 2 \(resumed from checkpoint-(\d+)\) =====$", re.M)


def _logs(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "launcher", "logs", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_logs_follow_goes_on_across_a_restart(runs: Path, tmp_path: Path) -> None:
    plan = synthetic_plan(f"crash_at_step: {CRASH}", steps=STEPS, every=5, step_time=0.25, name="logsf")
    run = start_detached(write_plan(tmp_path, plan), runs)
    wait_for(runs, run, lambda st: (job(st, "train")["step"] or 0) >= 2, what="attempt 1 stepping")
    one = _logs(run, "train", "--runs-dir", str(runs), "-f", "--attempt", "1")
    every = _logs(run, "train", "--runs-dir", str(runs), "-f", "--all-ranks", "--attempt", "1")
    out_one, err_one = one.communicate(timeout=300)
    out_all, err_all = every.communicate(timeout=60)
    st = status(runs, run)
    j = job(st, "train")
    # -f returned because the job was over, not before: it succeeded in attempt 2
    assert one.returncode == 0 and every.returncode == 0, err_one + err_all
    assert j["state"] == "succeeded" and len(j["attempts"]) == 2, j
    assert j["attempts"][0]["failure"] == "crash"
    (ckpt,) = {int(m) for m in BANNER.findall(out_one)}   # exactly one banner
    assert Path(j["attempts"][1]["resumed_from"]).name == f"checkpoint-{ckpt}"

    before, after = BANNER.split(out_one, maxsplit=1)[0], out_one[BANNER.search(out_one).end():]
    assert "[synthetic] rank 0 attempt 1 starting at step 0/40" in before
    assert f"[synthetic] injected crash at step {CRASH}" in before   # attempt 1 to its last line, then the banner
    assert f"[synthetic] rank 0 attempt 2 starting at step {ckpt}/40" in after
    log2 = (Path(st["dir"]) / "jobs" / "train" / "logs" / "attempt-2" / "rank-0.log").read_text()
    assert after.strip().endswith(log2.strip().splitlines()[-1])   # attempt 2 printed to its last line
    assert after.count("\n") >= log2.count("\n")

    assert len(BANNER.findall(out_all)) == 1
    b_all, a_all = BANNER.split(out_all, maxsplit=1)[0], out_all[BANNER.search(out_all).end():]
    assert "[rank 0] [synthetic] rank 0 attempt 1 starting at step 0/40" in b_all
    assert "[rank 1] [synthetic] rank 1 attempt 1 starting at step 0/40" in b_all
    assert f"[rank 1] [synthetic] rank 1 attempt 2 starting at step {ckpt}/40" in a_all
    assert all(line.startswith(("[rank 0] ", "[rank 1] ")) for line in a_all.strip().splitlines())

    wait_driver_gone(runs, run)
    drv = _cli("logs", run, "--driver", "--runs-dir", str(runs))
    assert drv.returncode == 0 and "train: attempt 2 started on" in drv.stdout, drv.stdout + drv.stderr
    drv_f = _cli("logs", run, "--driver", "-f", "--runs-dir", str(runs))   # the run is over: prints all, returns
    assert drv_f.returncode == 0 and drv_f.stdout == drv.stdout
    for n in (1, 2):
        agent = _cli("logs", run, "train", "--agent", "--attempt", str(n), "--runs-dir", str(runs))
        assert agent.returncode == 0, agent.stderr
        lines = agent.stdout.splitlines()
        assert lines[0] == f"===== agent-node0.log (attempt {n}) ====="
        assert f"agent of train attempt {n} node rank 0 (ranks [0, 1]) in run {run}" in lines[1]
    # the file is in the run directory, next to the ranks' logs
    assert (Path(st["dir"]) / "jobs" / "train" / "logs" / "attempt-1" / "agent-node0.log").is_file()

    # After the run: -f prints the latest attempt and returns; one attempt printed, so no banner.
    done = _cli("logs", run, "train", "--runs-dir", str(runs), "-f", "--all-ranks")
    assert done.returncode == 0 and f"[rank 1] [synthetic] rank 1 attempt 2 starting at step {ckpt}/40" in done.stdout
    assert "=====" not in done.stdout and "attempt 1 starting" not in done.stdout
    missing = _cli("logs", run, "nojob", "--runs-dir", str(runs))
    assert missing.returncode == 2 and "no logs yet for nojob" in missing.stderr
