"""README's Tracking command for real: the smoke plan (2 ranks, DeepSpeed ZeRO-2 on CPU) with
report_to [tensorboard, mlflow]; rank 1 is killed mid-run, the supervisor restarts the job from its
last checkpoint, and the TensorBoard curve and the MLflow run continue through the restart."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.integration.launcher.conftest import job, start_detached, wait_driver_gone, wait_for

pytestmark = pytest.mark.integration

# Long enough that the kill lands mid-training (the tiny model runs tens of steps per second here).
STEPS, EVERY = 240, 20
REPORT_TO = "jobs.sft_tiny.training.report_to=[tensorboard,mlflow]"


def test_tracking_continues_across_a_restart(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mlflow = pytest.importorskip("mlflow")
    run = start_detached(REPO / "plans" / "smoke.yaml", runs, "--set", REPORT_TO,
                         "--set", f"jobs.sft_tiny.training.max_steps={STEPS}",
                         "--set", f"jobs.sft_tiny.checkpoint.every={EVERY}",
                         "--set", "jobs.sft_tiny.retry.backoff=0.2")
    at = EVERY + 3
    st = wait_for(runs, run, lambda s: (job(s, "sft_tiny")["step"] or 0) >= at, timeout=400, what=f"step {at}")
    os.kill(job(st, "sft_tiny")["attempts"][-1]["pids"][1], signal.SIGKILL)
    st = wait_for(runs, run, lambda s: s["state"] not in ("running", "pending"), timeout=500, what="the run to end")
    wait_driver_gone(runs, run)
    j = job(st, "sft_tiny")
    assert j["state"] == "succeeded" and j["step"] == STEPS and len(j["attempts"]) == 2, j
    first, second = j["attempts"]
    assert first["failure"] == "crash"
    resumed_at = second["start_step"]
    assert resumed_at >= EVERY and first["end_step"] > resumed_at

    # TensorBoard: one log dir, a file per attempt (rank 0 only), one curve with every step once;
    # what attempt 1 logged past its checkpoint was purged and logged again by attempt 2.
    jd = Path(st["dir"]) / "jobs" / "sft_tiny"
    assert len(list((jd / "tb").glob("events.out.tfevents.*"))) == 2
    acc = EventAccumulator(str(jd / "tb"))
    acc.Reload()
    loss = [e.step for e in acc.Scalars("train/loss")]
    assert loss == list(range(1, STEPS + 1))
    attempt = {e.step: e.value for e in acc.Scalars("train/launcher/attempt")}
    assert all(attempt[s] == (1.0 if s <= resumed_at else 2.0) for s in range(1, STEPS + 1))
    assert {e.value for e in acc.Scalars("train/launcher/restarts")} == {0.0, 1.0}
    assert min(e.value for e in acc.Scalars("train/launcher/rss_hwm_mib")) > 0

    # MLflow: the file store under the job dir, the launcher run id as experiment, one run for both attempts.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3 reads its file store only when allowed
    client = mlflow.MlflowClient(tracking_uri=(jd / "mlruns").as_uri())
    (mrun,) = client.search_runs([client.get_experiment_by_name(run).experiment_id])
    assert mrun.info.run_name == "sft_tiny" and mrun.info.status == "FINISHED"
    assert mrun.data.tags["launcher.run_id"] == run and mrun.data.tags["launcher.attempt"] == "2"
    steps = {m.step for m in client.get_metric_history(mrun.info.run_id, "loss")}
    assert steps == set(range(1, STEPS + 1))
