"""What bin/status --watch adds under the table: the run's GPU-hours and ETA."""

from __future__ import annotations

from launcher.status import RunEta, gpu_hours, run_eta, watch_summary


def attempt(started, ended, gpus):
    return {"started": started, "ended": ended, "placement": [{"node": "n", "gpus": g} for g in gpus]}


JOBS = [
    {"name": "a", "state": "succeeded", "eta_s": None,
     "attempts": [attempt(0, 1800, [["0", "1"]]), attempt(1800, 3600, [["0", "1"]])]},   # 2 GPUs x 1 h
    {"name": "b", "state": "running", "eta_s": 600.0, "attempts": [attempt(3600, None, [["0"], ["0"]])]},  # 2 nodes
    {"name": "c", "state": "running", "eta_s": 1200.0, "attempts": [attempt(None, None, [])]},   # not started yet
    {"name": "d", "state": "pending", "eta_s": None, "attempts": []},
]


def test_gpu_hours_sums_attempts_times_their_gpus() -> None:
    assert gpu_hours(JOBS, now=3600) == 2.0
    assert gpu_hours(JOBS, now=3600 + 900) == 2.0 + 2 * 0.25   # the running attempt counts to now


def test_run_eta_is_the_slowest_running_job_and_counts_the_waiting() -> None:
    assert run_eta(JOBS) == RunEta(1200.0, 1)
    assert run_eta([j for j in JOBS if j["name"] != "d"]) == RunEta(1200.0, 0)
    no_rate = [dict(JOBS[1], eta_s=None)]
    assert run_eta(no_rate) == RunEta(None, 0)
    assert run_eta([]) == RunEta(None, 0)


def test_watch_summary_text() -> None:
    st = {"state": "running", "ended": None, "jobs": JOBS}
    assert watch_summary(st, now=3600) == "GPU-hours 2.000   run ETA >= 20m00s (1 job not started)"
    done = {"state": "succeeded", "ended": 3600, "jobs": JOBS[:1]}
    assert watch_summary(done, now=99999) == "GPU-hours 2.000   run ETA -"
