"""Jobs that evaluate and save like real ones, under tight step timeouts: long phases are timed by
their own progress (not charged to the step timeout), and a stall inside one is a hang of that phase."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.launcher.conftest import job, launch, status, synthetic_plan, write_plan

pytestmark = pytest.mark.integration


def _plan(params: str, hang: str, steps: int = 20, every: int = 10) -> str:
    return synthetic_plan(params, steps=steps, every=every, hang=hang, name="phases")


def test_long_evaluations_and_saves_under_a_short_step_timeout_finish_in_one_attempt(runs: Path, tmp_path: Path):
    """Issue 11's case: a 30 s evaluation every 10 steps and 15 s saves under hang {step: 5}. 15 steps:
    the evaluation and a save after step 10, five steps the step timeout judges again, the last save."""
    plan = write_plan(tmp_path, _plan("eval_every: 10, eval_time: 30, eval_batches: 15, save_time: 15",
                                      "{startup: 60, step: 5, eval: 20, save: 30}", steps=15))
    out = launch(plan, runs, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    j = job(status(runs), "train")
    assert j["state"] == "succeeded" and j["restarts"] == 0 and len(j["attempts"]) == 1, j
    assert j["step"] == 15


def test_a_stall_inside_an_evaluation_is_a_hang_of_phase_evaluating(runs: Path, tmp_path: Path):
    plan = write_plan(tmp_path, _plan("eval_every: 5, eval_time: 2, eval_batches: 10, hang_in_eval_at_step: 10",
                                      "{startup: 60, step: 3, eval: 4}", every=5))
    start = time.monotonic()
    out = launch(plan, runs, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    j = job(status(runs), "train")
    first, last = j["attempts"][0], j["attempts"][-1]
    assert first["failure"] == "hang" and "in phase evaluating (timeout 4s) at step 10" in first["detail"], first
    # Step 10's evaluation comes before its save (as in the Trainer): checkpoint-5 is the newest.
    assert last["state"] == "succeeded" and last["resumed_from"].endswith("checkpoint-5")
    print(f"stall in evaluation: run of {time.monotonic() - start:.0f} s, attempt 1 ended after "
          f"{first['ended'] - first['started']:.1f} s")


def test_a_stall_inside_a_save_is_a_hang_of_phase_saving(runs: Path, tmp_path: Path):
    plan = write_plan(tmp_path, _plan("hang_in_save_at_step: 10", "{startup: 60, step: 3, save: 4}", every=5))
    out = launch(plan, runs, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    first, last = job(status(runs), "train")["attempts"][0], job(status(runs), "train")["attempts"][-1]
    assert first["failure"] == "hang" and "in phase saving (timeout 4s) at step 10" in first["detail"], first
    assert last["state"] == "succeeded" and last["resumed_from"].endswith("checkpoint-5")
