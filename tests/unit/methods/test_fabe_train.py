"""FABE training in one process (no DeepSpeed): LoRA + gradient checkpointing, logged loss terms, outputs."""

from __future__ import annotations

import json

import pytest
import torch

from launcher.atomic import read_jsonl
from launcher.layout import JobDir
from launcher.spec import DataSource, LoraSpec, ModelSpec
from methods import fabe
from tests.helpers import DATA, make_job, tiny_training


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)


def fabe_job(tmp_path, **training):
    return make_job(tmp_path, job="fabe", method="fabe", model=ModelSpec(tiny="llama", seed=4),
                    params={"template": "user_assistant", "ranking_loss": "listmle", "alpha": 1.0, "beta": 0.3},
                    data={"train": DataSource(source=str(DATA / "fabe_ranked_mini.jsonl"), limit=8)},
                    training=tiny_training(**{"batch_size": 2, "max_length": 192,
                                              "lora": LoraSpec(r=4, alpha=8, dropout=0.0), **training}))


def test_fabe_trains_with_lora_and_gradient_checkpointing(tmp_path):
    from safetensors.torch import load_file

    job = fabe_job(tmp_path, gradient_checkpointing=True, max_steps=3)
    assert fabe.run(job) == 0
    jd = JobDir(tmp_path)
    result = json.loads(jd.result.read_text())
    assert result["status"] == "succeeded" and result["metrics"]["global_step"] == 3.0
    adapter = load_file(jd.adapter / "adapter_model.safetensors")
    # LoRA B starts at zero: non-zero means gradients reached LoRA through the checkpointed blocks.
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    logs = [m for m in read_jsonl(jd.metrics) if m["loss"] is not None]
    assert [m["step"] for m in logs] == [1, 2, 3]
    for m in logs:
        mle, rank = m["extra"]["mle_loss"], m["extra"]["rank_loss"]
        # Trainer's logged loss is alpha*MLE + beta*ranking of the same (single) micro-batch.
        assert m["loss"] == pytest.approx(mle + 0.3 * rank, rel=1e-4)
        assert rank > 0 and mle > 0
    seen = read_jsonl(jd.seen / "samples-rank-0.attempt-1.jsonl")
    assert [s["step"] for s in seen] == [1, 2, 3] and all(len(s["ids"]) == 2 for s in seen)


def test_grad_accumulation_scales_the_loss(tmp_path):
    """A per-batch-mean loss: with accumulation the Trainer divides it (loss_is_scaled_for_ga False), so the
    logged loss stays on the same scale as without accumulation."""
    job = fabe_job(tmp_path, max_steps=2, grad_accum=2, batch_size=1)
    assert fabe.run(job) == 0
    logs = [m for m in read_jsonl(JobDir(tmp_path).metrics) if m["loss"] is not None]
    for m in logs:
        assert m["loss"] == pytest.approx(m["extra"]["mle_loss"] + 0.3 * m["extra"]["rank_loss"], rel=1e-4)
    assert torch.isfinite(torch.tensor([m["grad_norm"] for m in logs])).all()


def test_validation_loss_uses_the_same_objective(tmp_path):
    job = fabe_job(tmp_path, max_steps=2)
    job = job.model_copy(update={
        "data": {**job.data, "eval": DataSource(source=str(DATA / "fabe_ranked_mini.jsonl"), limit=4)},
        "checkpoint": job.checkpoint.model_copy(update={"every": 2})})
    assert fabe.run(job) == 0
    evals = [m["extra"]["eval_loss"] for m in read_jsonl(JobDir(tmp_path).metrics) if "eval_loss" in m["extra"]]
    assert len(evals) == 1 and evals[0] > 0
