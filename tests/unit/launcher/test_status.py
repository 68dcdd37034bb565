"""The status table: a large sweep lists the jobs to act on and counts the rest."""

from __future__ import annotations

import io
import time

from rich.console import Console

from launcher import status


def _job(i: int, state: str) -> dict:
    return {"name": f"sweep_{i:04d}", "method": "synthetic", "state": state, "attempts": [], "step": None,
            "total_steps": None, "loss": None, "steps_per_s": None, "eta_s": None, "restarts": 0,
            "reason": "boom [exit 1]" if state == "failed" else None}


def _st(jobs: list[dict]) -> dict:
    return {"run": "r1", "state": "running", "created": time.time() - 5, "ended": None, "dir": "/runs/r1", "jobs": jobs}


def _text(st: dict, **kw) -> str:
    out = io.StringIO()
    status.render(st, Console(file=out, width=200), **kw)
    return out.getvalue()


def test_small_runs_list_every_job():
    jobs = [_job(i, s) for i, s in enumerate(["succeeded", "pending", "running", "skipped"])]
    shown, folded = status.shown_jobs(jobs)
    assert shown == jobs and folded == {}
    assert "not listed" not in _text(_st(jobs))


def test_a_large_sweep_lists_running_failed_killed_and_counts_the_rest():
    states = ["succeeded"] * 900 + ["pending"] * 80 + ["skipped"] * 5 + ["running"] * 12 + ["failed", "killed", "failed"]
    jobs = [_job(i, s) for i, s in enumerate(states)]
    shown, folded = status.shown_jobs(jobs)
    assert [j["state"] for j in shown] == ["running"] * 12 + ["failed", "killed", "failed"]
    assert folded == {"succeeded": 900, "pending": 80, "skipped": 5}
    text = _text(_st(jobs))
    assert "not listed: 900 succeeded, 80 pending, 5 skipped of 1000 jobs (--all lists every job)" in text
    assert "sweep_0997" in text and "sweep_0000" not in text
    assert "boom [exit 1]" in text    # reasons are text, not rich markup


def test_all_lists_every_job():
    jobs = [_job(i, "succeeded") for i in range(status.FOLD_OVER + 1)]
    assert status.shown_jobs(jobs, all_jobs=True) == (jobs, {})
    text = _text(_st(jobs), all_jobs=True)
    assert f"sweep_{status.FOLD_OVER:04d}" in text and "not listed" not in text


def test_a_command_jobs_signals_come_from_its_ranks_heartbeats(tmp_path):
    from launcher.heartbeat import Heartbeat, write
    from launcher.layout import RunDir
    rd = RunDir(tmp_path / "r1")
    hb = rd.job("mine").heartbeat(1)
    hb.parent.mkdir(parents=True)
    write(hb, Heartbeat(rank=1, step=1, total_steps=0, phase="training", signals={"output": 40.0, "cpu": 0.0}))
    write(rd.job("mine").heartbeat(0).with_name("script-rank-0.json"), Heartbeat(rank=0, step=3, total_steps=9,
                                                                                  phase="training"))
    assert status.signals(rd, "mine") == {1: {"output": 40.0, "cpu": 0.0}}
    assert status.signals(rd, "other") is None


def test_the_table_names_the_quietest_ranks_signals_for_a_running_command_job():
    sig = {0: {"output": 2.0, "cpu": 0.0, "progress": 30.0}, 1: {"output": 40.0, "cpu": 12.0, "progress": 41.0}}
    assert status.signals_note(sig) == "idle (rank 1): cpu 12s, output 40s, progress 41s"
    assert status.signals_note(None) == ""
    job = dict(_job(0, "running"), method="command", signals=sig)
    assert "idle (rank 1): cpu 12s, output 40s, progress 41s" in _text(_st([job]))
