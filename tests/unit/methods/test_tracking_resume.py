"""Tracking across a restart, in one process: attempt 1 of a real tiny SFT job dies after step 5,
attempt 2 resumes from checkpoint-4; each tracker's files are read back with its own reader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from transformers import TrainerCallback

from launcher.layout import JobDir
from launcher.spec import CheckpointSpec, JobFile
from methods import tracking
from methods.core import finetune
from methods.core.training import MethodTrainer
from methods.data import SFTCollator
from methods.params import SFTParams
from tests.helpers import make_job, tiny_training

STEPS, EVERY, DIES_AFTER = 8, 2, 5


@pytest.fixture(autouse=True)
def own_environment():
    """The trackers' variables are set in this process (a rank's): none of them outlives the test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    tracking._applied.clear()


class Dies(TrainerCallback):
    """A crash after a step was logged (and its events flushed): the Trainer never ends cleanly."""

    def on_log(self, args, state, control, logs=None, **kw):
        if state.global_step == DIES_AFTER:
            raise RuntimeError("rank died")


def _attempt(job: JobFile, dies: bool) -> None:
    s = finetune.setup(job, SFTParams.model_validate(job.params))
    extra = [Dies()] if dies else []
    trainer = MethodTrainer(model=s.model, args=s.args, train_dataset=s.train_ds,
                            data_collator=SFTCollator(s.tokenizer.pad_token_id), processing_class=s.tokenizer,
                            callbacks=s.rank.training_callbacks() + extra)
    trainer.train(resume_from_checkpoint=job.resume_from)


def _exit(trackers: list[str], exit_code: int) -> None:
    """What a rank's exit does to its W&B run. Here, in one process, the run would stay active (HF's
    callback leaves it open) and the next attempt would reuse it instead of resuming it by id.
    finish() returns before wandb-core has closed the run's stream (its debug-internal.log says
    "stream: finishing up" after it), so the .wandb file could still lack records when read;
    teardown() waits for the service to exit, as a rank's interpreter exit does."""
    if "wandb" in trackers:
        import wandb

        wandb.finish(exit_code=exit_code)
        wandb.teardown()


def two_attempts(tmp_path: Path, trackers: list[str]) -> JobDir:
    common = dict(training=tiny_training(max_steps=STEPS, report_to=trackers),
                  checkpoint=CheckpointSpec(every=EVERY, keep=2))
    with pytest.raises(RuntimeError, match="rank died"):
        _attempt(make_job(tmp_path, attempt=1, **common), dies=True)
    _exit(trackers, 1)
    jd = JobDir(tmp_path)
    _attempt(make_job(tmp_path, attempt=2, resume_from=str(jd.checkpoints / "checkpoint-4"), **common), dies=False)
    _exit(trackers, 0)
    return jd


def _by_step(points) -> dict[int, float]:
    steps = [p.step for p in points]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {p.step: p.value for p in points}


def test_tensorboard_curve_continues_across_the_restart(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    jd = two_attempts(tmp_path, ["tensorboard"])
    assert len(list(jd.tb.glob("events.out.tfevents.*"))) == 2   # one file per attempt, one log dir
    acc = EventAccumulator(str(jd.tb))
    acc.Reload()
    loss = _by_step(acc.Scalars("train/loss"))
    assert sorted(loss) == list(range(1, STEPS + 1))
    # Steps 5 was logged by both attempts: the purge at the resumed first step keeps attempt 2's.
    attempt = _by_step(acc.Scalars("train/launcher/attempt"))
    assert attempt == {s: (1.0 if s <= 4 else 2.0) for s in range(1, STEPS + 1)}
    assert set(_by_step(acc.Scalars("train/launcher/restarts")).values()) == {0.0, 1.0}
    phase = _by_step(acc.Scalars("train/launcher/phase"))
    assert phase[2] == 3.0 and phase[3] == 1.0   # saving follows every second step
    assert min(_by_step(acc.Scalars("train/launcher/rss_hwm_mib")).values()) > 0


def test_mlflow_one_run_per_job_continued_in_the_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    jd = two_attempts(tmp_path, ["mlflow"])
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # for this reader too (MLflow 3): set by the job already
    client = MlflowClient(tracking_uri=(jd.root / "mlruns").as_uri())
    exp = client.get_experiment_by_name("test-run")   # the launcher run id
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "sft"
    run = runs[0]
    assert run.data.tags["launcher.job"] == "sft" and run.data.tags["launcher.attempt"] == "2"
    assert run.info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "loss")}
    assert steps == set(range(1, STEPS + 1))
    attempts = {(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "launcher/attempt")}
    assert (4, 1.0) in attempts and (STEPS, 2.0) in attempts
    assert run.data.params["per_device_train_batch_size"] == "2"   # logged once, by attempt 1


def test_wandb_offline_one_run_id_resumed(tmp_path):
    pytest.importorskip("wandb")

    jd = two_attempts(tmp_path, ["wandb"])
    run_id = tracking.wandb_run_id("test-run", "sft")
    runs = sorted((jd.root / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 2, runs   # one offline run dir per attempt, the same id: `wandb sync` merges them
    records = [wandb_records(next(r.glob("*.wandb"))) for r in runs]
    history = [rows for rows, _ in records]
    for _, run_records in records:
        assert {(r.run_id, r.run_group, r.job_type) for r in run_records} == {(run_id, "test-run", "sft")}
    first = {int(h["train/global_step"]): h for h in history[0] if "train/loss" in h}
    second = {int(h["train/global_step"]): h for h in history[1] if "train/loss" in h}
    assert sorted(first) == list(range(1, DIES_AFTER + 1)) and sorted(second) == list(range(5, STEPS + 1))
    series = [h for h in history[1] if "train/launcher/attempt" in h]
    assert series and all(h["train/launcher/attempt"] == 2 for h in series)


def wandb_records(path: Path) -> tuple[list[dict], list]:
    """The history rows and run records of an offline .wandb file, parsed with wandb's own protobuf Record. wandb 0.31
    dropped its Python reader (datastore.py), so the container is read here: a 7-byte header (':W&B',
    magic, version), then LevelDB log blocks of 32 KiB, each chunk a 7-byte header (CRC, length, type
    1 full / 2 first / 3 middle / 4 last) before its bytes; a block's tail under 7 bytes is padding."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B", raw[:7]
    rows, runs, pending, pos, block = [], [], b"", 7, 32768
    while pos + 7 <= len(raw):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0 and length == 0:
            break   # the preallocated rest of a block never written
        chunk, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            if rec.WhichOneof("record_type") == "run":
                runs.append(rec.run)
            if rec.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in rec.history.item})
    return rows, runs
