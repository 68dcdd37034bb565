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


def test_shared_prompt_turns_itself_off_while_dropout_is_active(tmp_path, caplog):
    """One prompt copy gives all n candidates one LoRA-dropout draw, where Tuna runs B x n independent
    rows: with dropout > 0 the job trains per-candidate and says why; with dropout 0 it shares."""
    from methods.models import attach_adapters, byte_tokenizer, tiny_model

    base = tiny_model("llama", byte_tokenizer(), {}, seed=4)
    dropped = attach_adapters(base, ModelSpec(tiny="llama"), LoraSpec(r=4, alpha=8, dropout=0.1), False)
    shared, why = fabe.use_shared_prompt(True, "sdpa", dropped)
    assert not shared and "Dropout(p=0.1)" in why and "training.lora.dropout: 0" in why
    plain = attach_adapters(tiny_model("llama", byte_tokenizer(), {}, seed=4), ModelSpec(tiny="llama"),
                            LoraSpec(r=4, alpha=8, dropout=0.0), False)
    assert fabe.use_shared_prompt(True, "sdpa", plain) == (True, "")
    assert fabe.use_shared_prompt(True, "flash_attention_2", plain)[0] is False
    plain.config.attention_dropout = 0.1   # functional dropout, no module: read from the config
    assert fabe.training_dropout(plain) == ["config.attention_dropout=0.1"]

    caplog.set_level("INFO", logger="methods.fabe")
    assert fabe.run(fabe_job(tmp_path, max_steps=1, lora=LoraSpec(r=4, alpha=8, dropout=0.1))) == 0
    assert "shared_prompt off, candidates get their own copy of the prompt: dropout is active" in caplog.text
    assert "per-candidate prompt" in caplog.text

