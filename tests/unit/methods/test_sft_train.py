"""SFT training in one process (no DeepSpeed): TrainingArguments mapping, callbacks, outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from launcher import checkpoints as ckpt
from launcher import heartbeat
from launcher.atomic import read_jsonl
from launcher.layout import JobDir
from launcher.spec import CheckpointSpec, DataSource, LoraSpec, ModelSpec
from methods import sft
from methods.core.callbacks import CheckpointCallback, HeartbeatCallback, MetricsCallback, SampleRecorder
from methods.core.training import MethodTrainer, training_arguments
from methods.data import SFTCollator, SFTDataset, read_rows, to_records
from methods.models import attach_adapters, load_base_model, load_tokenizer
from tests.helpers import DATA, make_job, save_random_adapter, tiny_training


def test_training_arguments_mapping(tmp_path):
    job = make_job(tmp_path, training=tiny_training(scheduler="cosine", warmup_ratio=0.1, weight_decay=0.1, grad_accum=3,
                                                    max_steps=50, gradient_checkpointing=True),
                   checkpoint=CheckpointSpec(every=7, keep=3))
    args = training_arguments(job, "fp32", has_eval=False)
    assert args.use_cpu and not args.bf16 and not args.fp16
    assert args.output_dir == str(tmp_path / "checkpoints")
    assert (args.save_strategy, args.save_steps, args.save_total_limit) == ("steps", 7, None)
    assert args.eval_strategy == "no"
    assert args.lr_scheduler_type == "cosine" and args.get_warmup_steps(50) == 5
    assert (args.gradient_accumulation_steps, args.max_steps, args.weight_decay) == (3, 50, 0.1)
    assert args.activation_checkpointing and args.report_to == ["tensorboard"] and not args.remove_unused_columns
    assert args.run_name == "sft" and os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tb")
    assert training_arguments(job, "fp32", has_eval=True).eval_steps == 7


class Probe(TrainerCallback):
    """Reads this rank's heartbeat file at chosen events, to see the phase an outsider would see."""

    def __init__(self, path: Path, events: tuple[str, ...]):
        self.path, self.events, self.seen = path, events, []

    def _read(self, event, state):
        hb = heartbeat.read(self.path)
        self.seen.append((event, state.global_step, hb.phase if hb else None))

    def on_step_end(self, args, state, control, **kw):
        if "step_end" in self.events:
            self._read("step_end", state)

    def on_save(self, args, state, control, **kw):
        if "save" in self.events:
            self._read("save", state)
            assert ckpt.is_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}")


def test_heartbeat_phases_and_checkpoint_markers(tmp_path):
    data = {"train": DataSource(source=str(DATA / "sst2_mini.jsonl"), limit=12),
            "eval": DataSource(source=str(DATA / "sst2_mini.jsonl"), limit=4)}
    job = make_job(tmp_path, data=data, training=tiny_training(max_steps=6), checkpoint=CheckpointSpec(every=2, keep=2))
    jd = JobDir(tmp_path)
    args = training_arguments(job, "fp32", has_eval=True)
    tok = load_tokenizer(job.model)
    model = attach_adapters(load_base_model(job.model, tok, torch.float32), job.model, job.training.lora, False)
    train = SFTDataset.from_records(to_records(read_rows(data["train"]), "train"), "alpaca", tok, 256)
    evald = SFTDataset.from_records(to_records(read_rows(data["eval"]), "eval"), "alpaca", tok, 256)
    hb = HeartbeatCallback(jd.heartbeat(0), 0, attempt=1)
    during_save = Probe(jd.heartbeat(0), ("save",))
    after_step = Probe(jd.heartbeat(0), ("step_end",))
    recorder = SampleRecorder(jd.seen / "samples-rank-0.attempt-1.jsonl", train.sample_ids)
    trainer = MethodTrainer(model=model, args=args, train_dataset=train, eval_dataset=evald,
                               data_collator=SFTCollator(tok.pad_token_id), processing_class=tok, recorder=recorder,
                               callbacks=[CheckpointCallback(jd.checkpoints, 2, 0), during_save, hb, after_step,
                                          MetricsCallback(jd.metrics, 1)])
    trainer.train()

    # Every second step evaluates then saves; the heartbeat announces it at the end of that step.
    assert [(s, p) for _, s, p in after_step.seen] == [(1, "training"), (2, "evaluating"), (3, "training"),
                                                       (4, "evaluating"), (5, "training"), (6, "evaluating")]
    # While the checkpoint callback writes the marker, the phase is still "saving".
    assert [(s, p) for _, s, p in during_save.seen] == [(2, "saving"), (4, "saving"), (6, "saving")]
    assert [ckpt.step_of(p) for p in ckpt.complete_checkpoints(jd.checkpoints)] == [4, 6]  # pruned to keep=2
    assert heartbeat.read(jd.heartbeat(0)).phase == "saving"  # on_train_end: final outputs follow

    metrics = read_jsonl(jd.metrics)
    assert [m["step"] for m in metrics if m["loss"] is not None] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in metrics if "eval_loss" in m["extra"]] == [2, 4, 6]
    seen = read_jsonl(jd.seen / "samples-rank-0.attempt-1.jsonl")
    assert [s["step"] for s in seen] == [1, 2, 3, 4, 5, 6]  # eval batches are not recorded
    assert sorted(i for s in seen for i in s["ids"]) == sorted(train.sample_ids)  # 6 x 2 = one epoch of 12


def test_sft_run_single_process(tmp_path, monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    job = make_job(tmp_path, data={"train": DataSource(source=str(DATA / "sst2_mini.jsonl"), limit=8)},
                   params={"template": "auto"}, training=tiny_training(epochs=2))
    assert sft.run(job) == 0
    jd = JobDir(tmp_path)
    result = json.loads(jd.result.read_text())
    assert result["status"] == "succeeded" and result["metrics"]["global_step"] == 8.0
    assert result["dist"] == {"backend": None, "world_size": 1}
    assert (jd.adapter / "adapter_model.safetensors").is_file() and (jd.adapter / "tokenizer.json").is_file()
    hb = heartbeat.read(jd.heartbeat(0))
    assert (hb.phase, hb.step, hb.total_steps) == ("done", 8, 8)
    seen = read_jsonl(jd.seen / "samples-rank-0.attempt-1.jsonl")
    ids = [i for s in seen for i in s["ids"]]
    assert sorted(ids) == sorted([f"train:{i}" for i in range(8)] * 2)  # two epochs


def test_sft_run_rejects_bad_params(tmp_path):
    job = make_job(tmp_path, params={"template": "alpaca", "poison_ratio": 0.1})
    with pytest.raises(ValueError, match="needs sample_num"):
        sft.run(job)
    with pytest.raises(Exception, match="extra"):
        sft.run(make_job(tmp_path, params={"templat": "alpaca"}))


def test_stacked_start_adapter_stays_frozen_and_is_not_saved(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    start = save_random_adapter(tmp_path / "stage1")
    job = make_job(tmp_path / "job", model=ModelSpec(tiny="llama", seed=3, adapter=str(start), adapter_mode="stack"),
                   data={"train": DataSource(source=str(DATA / "sst2_mini.jsonl"), limit=8)},
                   training=tiny_training(lora=LoraSpec(r=4, alpha=8, dropout=0.0)))
    assert sft.run(job) == 0
    jd = JobDir(tmp_path / "job")
    trained = load_file(jd.adapter / "adapter_model.safetensors")
    assert not (jd.adapter / "start").exists()  # only the trainable adapter is written
    assert all(".default." not in k and ".start." not in k for k in trained)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in trained.items())  # B starts at 0: it trained
    result = json.loads(jd.result.read_text())
    assert (result["start_adapter"], result["start_adapter_mode"]) == (str(start), "stack")

    # The optimizer held exactly the trainable adapter's tensors: the start adapter was never stepped.
    last = ckpt.all_checkpoints(jd.checkpoints)[-1]
    opt = torch.load(last / "optimizer.pt", weights_only=False)
    assert sum(len(g["params"]) for g in opt["param_groups"]) == len(trained)
