"""The synthetic method in-process: heartbeats, complete checkpoints, metrics, result, resume, injected faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher import checkpoints, heartbeat
from launcher.atomic import read_json, read_jsonl, write_json
from launcher.layout import JobDir
from launcher.spec import CheckpointSpec, JobFile, Resources, TrainingSpec
from methods import synthetic


def job(tmp_path: Path, attempt: int = 1, resume_from: str | None = None, every: int = 3, keep: int = 2,
        **params) -> JobFile:
    return JobFile(run_id="t", job="syn", method="synthetic", params={"step_time": 0.001, **params}, model=None, data={},
                   training=TrainingSpec(), deepspeed=None, checkpoint=CheckpointSpec(every=every, keep=keep),
                   resources=Resources(), job_dir=str(tmp_path / "syn"), attempt=attempt, resume_from=resume_from)


@pytest.fixture(autouse=True)
def rank0(monkeypatch):
    monkeypatch.setenv("RANK", "0")


def test_full_run_writes_heartbeat_checkpoints_metrics_result(tmp_path, capsys):
    jf = job(tmp_path, steps=10, every=3)
    assert synthetic.run(jf) == 0
    jd = JobDir(Path(jf.job_dir))
    hb = heartbeat.read(jd.heartbeat(0))
    assert (hb.rank, hb.step, hb.total_steps, hb.phase, hb.attempt) == (0, 10, 10, "done", 1)
    assert hb.pid > 0
    # every 3 steps and at the end; pruned to the 2 newest, all complete
    assert [p.name for p in checkpoints.all_checkpoints(jd.checkpoints)] == ["checkpoint-9", "checkpoint-10"]
    for p in checkpoints.all_checkpoints(jd.checkpoints):
        step = checkpoints.step_of(p)
        assert checkpoints.marker(p) == {"step": step, "files": checkpoints.manifest(p)}
        assert read_json(p / "state.json") == {"step": step}
    assert checkpoints.latest_complete(jd.checkpoints) == jd.checkpoints / "checkpoint-10"
    metrics = read_jsonl(jd.metrics)
    assert [m["step"] for m in metrics] == list(range(1, 11))
    assert all(m["attempt"] == 1 for m in metrics)
    assert metrics[0]["loss"] == pytest.approx(0.5) and metrics[-1]["loss"] == pytest.approx(1 / 11)
    assert read_json(jd.result) == {"status": "succeeded", "metrics": {"steps": 10, "final_loss": pytest.approx(1 / 11)}}
    assert "rank 0 attempt 1 starting at step 0/10" in capsys.readouterr().out


def test_keep_three(tmp_path):
    jf = job(tmp_path, steps=12, every=2, keep=3)
    assert synthetic.run(jf) == 0
    names = [p.name for p in checkpoints.all_checkpoints(JobDir(Path(jf.job_dir)).checkpoints)]
    assert names == ["checkpoint-8", "checkpoint-10", "checkpoint-12"]


def test_resume_from_checkpoint_starts_at_its_step(tmp_path, capsys):
    ck = tmp_path / "syn" / "checkpoints" / "checkpoint-6"
    write_json(ck / "state.json", {"step": 6})
    checkpoints.mark_complete(ck, 6)
    jf = job(tmp_path, attempt=2, resume_from=str(ck), steps=10, every=5)
    assert synthetic.run(jf) == 0
    jd = JobDir(Path(jf.job_dir))
    metrics = read_jsonl(jd.metrics)
    assert [m["step"] for m in metrics] == [7, 8, 9, 10]
    assert all(m["attempt"] == 2 for m in metrics)
    assert "rank 0 attempt 2 starting at step 6/10" in capsys.readouterr().out
    assert heartbeat.read(jd.heartbeat(0)).attempt == 2
    assert read_json(jd.result)["metrics"]["steps"] == 10
    assert [p.name for p in checkpoints.complete_checkpoints(jd.checkpoints)] == ["checkpoint-6", "checkpoint-10"]


def test_resume_from_checkpoint_without_state_fails_loudly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="has no state.json"):
        synthetic.run(job(tmp_path, resume_from=str(tmp_path / "empty"), steps=3))


def test_crash_only_on_configured_attempt(tmp_path, capsys):
    jf1 = job(tmp_path, attempt=1, steps=10, every=2, crash_at_step=5)
    assert synthetic.run(jf1) == synthetic.CRASH_EXIT == 3
    jd = JobDir(Path(jf1.job_dir))
    assert "injected crash at step 5" in capsys.readouterr().err
    assert not jd.result.exists()
    assert [m["step"] for m in read_jsonl(jd.metrics)] == [1, 2, 3, 4]
    hb = heartbeat.read(jd.heartbeat(0))
    assert (hb.step, hb.phase) == (4, "training")   # back to training once checkpoint-4 was complete
    latest = checkpoints.latest_complete(jd.checkpoints)
    assert latest == jd.checkpoints / "checkpoint-4"
    # the restart resumes from the checkpoint and does not crash again
    jf2 = job(tmp_path, attempt=2, resume_from=str(latest), steps=10, every=2, crash_at_step=5)
    assert synthetic.run(jf2) == 0
    assert [m["step"] for m in read_jsonl(jd.metrics)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert read_json(jd.result)["status"] == "succeeded"


def test_crash_on_listed_attempts_and_ranks(tmp_path, monkeypatch):
    assert synthetic.run(job(tmp_path / "a", attempt=2, steps=5, crash_at_step=2, fault_attempts=[1, 2])) == 3
    assert synthetic.run(job(tmp_path / "b", attempt=3, steps=5, crash_at_step=2, fault_attempts=[1, 2])) == 0
    assert synthetic.run(job(tmp_path / "c", attempt=1, steps=5, crash_at_step=2, fault_ranks=[1])) == 0
    monkeypatch.setenv("RANK", "1")
    assert synthetic.run(job(tmp_path / "d", attempt=1, steps=5, crash_at_step=2, fault_ranks=[1])) == 3


def test_oom_prints_cuda_oom_and_exits_1(tmp_path, capsys):
    assert synthetic.run(job(tmp_path, steps=5, oom_at_step=2)) == 1
    assert "CUDA out of memory" in capsys.readouterr().err


def test_non_zero_rank_writes_no_metrics_or_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    jf = job(tmp_path, steps=4, every=2)
    assert synthetic.run(jf) == 0
    jd = JobDir(Path(jf.job_dir))
    assert heartbeat.read(jd.heartbeat(1)).phase == "done"
    assert not jd.heartbeat(0).exists()
    assert not jd.metrics.exists() and not jd.result.exists() and not jd.checkpoints.exists()


def test_fail_result(tmp_path):
    jf = job(tmp_path, steps=2, fail_result=True)
    assert synthetic.run(jf) == 0
    assert read_json(JobDir(Path(jf.job_dir)).result)["status"] == "failed"


def test_runs_through_the_rank_entry(tmp_path, monkeypatch):
    """`python -m methods JOB.json` dispatches to synthetic.run (called in-process here)."""
    from methods.__main__ import main
    jf = job(tmp_path, steps=3)
    path = JobDir(Path(jf.job_dir)).job_file(1)
    write_json(path, jf.model_dump())
    assert main([str(path)]) == 0
    assert read_json(JobDir(Path(jf.job_dir)).result)["status"] == "succeeded"


def test_evaluation_and_save_phases_as_a_trainer_beats_them(tmp_path, monkeypatch):
    """eval_every / eval_time / eval_batches / save_time: the heartbeat goes training -> evaluating
    (progress 0..n-1, one per batch) -> training -> saving -> training, all at the same step."""
    seen = []
    real_write = heartbeat.write
    monkeypatch.setattr(heartbeat, "write", lambda path, hb: (seen.append((hb.step, hb.phase, hb.progress)),
                                                              real_write(path, hb)))
    jf = job(tmp_path, steps=4, every=4, eval_every=2, eval_time=0.03, eval_batches=3, save_time=0.01)
    assert synthetic.run(jf) == 0
    at2 = [s for s in seen if s[0] == 2]
    assert at2 == [(2, "training", 0), (2, "evaluating", 0), (2, "evaluating", 1), (2, "evaluating", 2),
                   (2, "training", 0)]
    at4 = [s for s in seen if s[0] == 4]
    assert [p for _, p, _ in at4] == ["training", "evaluating", "evaluating", "evaluating", "training", "saving",
                                      "training", "done"]


def test_holding_gpu_memory_without_cuda_stops_with_the_reason() -> None:
    import torch

    from methods.synthetic import _hold_gpu_memory
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: bench/gpu_check.sh runs this for real")
    with pytest.raises(SystemExit, match="cuda_mib_per_sample needs a CUDA device"):
        _hold_gpu_memory(1.0)


def test_held_host_memory_is_resident() -> None:
    """The host backend measures RSS: the hold must be in it at once, not when first touched."""
    import psutil
    from methods.synthetic import _hold_host_memory
    before = psutil.Process().memory_info().rss
    held = _hold_host_memory(64)
    assert psutil.Process().memory_info().rss - before >= 60 << 20
    del held
