"""A whole plan through real Ray: dependency order, disjoint devices, crash → restart from checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.atomic import read_json
from tests.helpers import REPO
from tests.integration.launcher.conftest import launch, status, write_plan

pytestmark = pytest.mark.integration


def _seen(run_dir: Path, job: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "jobs" / job / "seen").glob("rank-*.json"))]


def test_synthetic_pipeline_runs_in_dependency_order_on_disjoint_gpus(runs: Path) -> None:
    out = launch(REPO / "plans" / "pipeline_synthetic.yaml", runs, "--simulate-gpus", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    st = status(runs)
    jobs = {j["name"]: j for j in st["jobs"]}
    assert st["state"] == "succeeded" and all(j["state"] == "succeeded" for j in jobs.values())
    for j in jobs.values():
        (att,) = j["attempts"]
        for up in j["needs"]:
            assert att["started"] >= jobs[up]["attempts"][-1]["ended"], f"{j['name']} started before {up} ended"
    # Jobs whose attempts overlapped in time held different GPUs, as the ranks themselves saw them.
    spans = {n: (j["attempts"][0]["started"], j["attempts"][0]["ended"]) for n, j in jobs.items()}
    seen = {n: {s["cuda_visible_devices"] for s in _seen(Path(st["dir"]), n)} for n in jobs}
    overlapping = [(a, b) for a in jobs for b in jobs if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]
    assert overlapping, "lisa and sft_baseline should run at the same time on 2 GPUs"
    for a, b in overlapping:
        assert seen[a].isdisjoint(seen[b]), f"{a} and {b} ran at the same time on {seen[a]} / {seen[b]}"


def test_crash_restarts_from_last_complete_checkpoint_and_failure_skips_only_dependants(runs: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, """
name: faults
defaults:
  method: synthetic
  resources: {nodes: 1, gpus_per_node: 1}
  checkpoint: {every: 5, keep: 2}
  retry: {max_restarts: 2, backoff: 0.5}
jobs:
  flaky:
    params: {steps: 12, step_time: 0.05, crash_at_step: 8}
  after_flaky:
    needs: [flaky]
    params: {steps: 3}
  broken:
    params: {steps: 4, crash_at_step: 2, fault_attempts: [1, 2, 3]}
    retry: {max_restarts: 1, backoff: 0.1}
  after_broken:
    needs: [broken]
    params: {steps: 3}
""")
    out = launch(plan, runs, "--simulate-gpus", "2")
    assert out.returncode == 1, out.stdout + out.stderr
    st = status(runs)
    jobs = {j["name"]: j for j in st["jobs"]}
    flaky = jobs["flaky"]
    assert flaky["state"] == "succeeded" and flaky["step"] == 12 and flaky["restarts"] == 1
    first, second = flaky["attempts"]
    assert first["failure"] == "crash" and first["exit_codes"]["0"] == 3
    assert first["end_step"] == 7 and first["lost_steps"] == 2
    assert second["resumed_from"].endswith("checkpoint-5") and second["start_step"] == 5
    assert jobs["after_flaky"]["state"] == "succeeded"
    assert jobs["broken"]["state"] == "failed" and len(jobs["broken"]["attempts"]) == 2
    assert "max_restarts" in jobs["broken"]["reason"]
    assert jobs["after_broken"]["state"] == "skipped" and "broken" in jobs["after_broken"]["reason"]
    run_dir = Path(st["dir"])
    assert read_json(run_dir / "jobs" / "flaky" / "result.json")["status"] == "succeeded"
    log = (run_dir / "jobs" / "flaky" / "logs" / "attempt-2" / "rank-0.log").read_text()
    assert "starting at step 5/12" in log
