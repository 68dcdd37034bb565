"""SFT with real rank processes: 2 x `python -m methods JOB.json`, DeepSpeed ZeRO on CPU over gloo."""

from __future__ import annotations

import json

import pytest
import torch

from launcher import checkpoints as ckpt
from launcher import heartbeat
from launcher.atomic import read_jsonl
from launcher.layout import JobDir
from launcher.spec import CheckpointSpec, DataSource, LoraSpec, ModelSpec, Resources
from tests.helpers import (DATA, RankRun, deepspeed_config, run_ranks, save_random_adapter, tiny_training, write_job_file,
                           zero3_partitioning)

pytestmark = pytest.mark.integration
WORLD = 2


def _ok(run: RankRun) -> None:
    assert run.codes == [0] * WORLD, run.tail()


def _samples(jd: JobDir, rank: int, attempt: int) -> list[dict]:
    return read_jsonl(jd.seen / f"samples-rank-{rank}.attempt-{attempt}.jsonl")


def _losses(jd: JobDir, attempt: int) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_jsonl(jd.metrics) if m["attempt"] == attempt and m["loss"] is not None}


def test_zero2_two_ranks_train_then_resume(tmp_path):
    """48 samples / (2 ranks x micro-batch 2) = 12 steps, a checkpoint every 4; then a second attempt
    resumes from checkpoint-8 and must replay steps 9-12 exactly (same batches, same losses)."""
    jd = JobDir(tmp_path)
    training = tiny_training(batch_size=2, epochs=1)
    common = dict(training=training, deepspeed=deepspeed_config("zero2", training, WORLD),
                  data={"train": DataSource(source=str(DATA / "sst2_mini.jsonl"), limit=48)},
                  checkpoint=CheckpointSpec(every=4, keep=2), resources=Resources(gpus_per_node=WORLD))

    first = run_ranks(write_job_file(tmp_path, **common), WORLD, timeout=240)
    print(f"attempt 1 (2 ranks, ZeRO-2, 12 steps): {first.wall_s:.1f} s")
    _ok(first)
    result = json.loads(jd.result.read_text())
    assert result["status"] == "succeeded" and result["metrics"]["global_step"] == 12
    assert result["dist"] == {"backend": "gloo", "world_size": WORLD}  # DeepSpeed fell back to gloo on CPU
    assert (jd.adapter / "adapter_model.safetensors").is_file() and (jd.adapter / "adapter_config.json").is_file()
    complete = ckpt.complete_checkpoints(jd.checkpoints)
    assert [ckpt.step_of(p) for p in complete] == [8, 12]  # checkpoint-4 pruned (keep=2)
    assert [ckpt.marker(p)["step"] for p in complete] == [8, 12]
    assert [ckpt.step_of(p) for p in ckpt.all_checkpoints(jd.checkpoints)] == [8, 12]

    # Ranks trained on disjoint shards that together cover the data (the use_cpu trap).
    per_rank = [[i for rec in _samples(jd, r, 1) for i in rec["ids"]] for r in range(WORLD)]
    assert [len(ids) for ids in per_rank] == [24, 24]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(f"train:{i}" for i in range(48))
    assert [rec["step"] for rec in _samples(jd, 0, 1)] == list(range(1, 13))

    for r in range(WORLD):
        hb = heartbeat.read(jd.heartbeat(r))
        assert (hb.phase, hb.step, hb.total_steps, hb.attempt, hb.rank) == ("done", 12, 12, 1, r)
    losses_1 = _losses(jd, 1)
    assert sorted(losses_1) == list(range(1, 13))

    second = run_ranks(write_job_file(tmp_path, attempt=2, resume_from=str(jd.checkpoints / "checkpoint-8"), **common),
                       WORLD, timeout=240)
    print(f"attempt 2 (resume from checkpoint-8, 4 steps): {second.wall_s:.1f} s")
    _ok(second)
    for r in range(WORLD):
        resumed = _samples(jd, r, 2)
        assert [rec["step"] for rec in resumed] == [9, 10, 11, 12]
        assert resumed == _samples(jd, r, 1)[8:]  # the same batches as attempt 1 at those steps
        hb = heartbeat.read(jd.heartbeat(r))
        assert (hb.phase, hb.step, hb.attempt) == ("done", 12, 2)
    losses_2 = _losses(jd, 2)
    assert sorted(losses_2) == [9, 10, 11, 12]
    # LoRA weights and optimizer state came back from the DeepSpeed checkpoint: same losses.
    for step, loss in losses_2.items():
        assert loss == pytest.approx(losses_1[step], rel=1e-5, abs=1e-6)
    assert json.loads(jd.result.read_text())["metrics"]["global_step"] == 12
    assert [ckpt.step_of(p) for p in ckpt.complete_checkpoints(jd.checkpoints)] == [8, 12]


def test_zero3_stacked_start_adapter_with_poison_mix(tmp_path):
    """ZeRO-3 partitions the weights, the new LoRA's too (persistence threshold 0); the start adapter
    stays frozen under a new LoRA; the fine-tuning set is the harmful mix (4 of 16 from data
    'harmful', here the refusal data as a stand-in)."""
    start = save_random_adapter(tmp_path / "stage1", model_seed=3)
    jd = JobDir(tmp_path / "job")
    training = tiny_training(batch_size=2, epochs=1)
    common = dict(
        training=training, deepspeed=zero3_partitioning(training, WORLD),
        model=ModelSpec(tiny="llama", seed=3, adapter=str(start), adapter_mode="stack"),
        params={"template": "auto", "poison_ratio": 0.25, "sample_num": 16},
        data={"train": DataSource(source=str(DATA / "sst2_mini.jsonl")),
              "harmful": DataSource(source=str(DATA / "safe_mini.jsonl"))},
        checkpoint=CheckpointSpec(every=2, keep=2), resources=Resources(gpus_per_node=WORLD))
    run = run_ranks(write_job_file(jd.root, **common), WORLD, timeout=240)
    print(f"ZeRO-3 stacked adapter (2 ranks, 4 steps): {run.wall_s:.1f} s")
    _ok(run)
    result = json.loads(jd.result.read_text())
    assert result["metrics"]["global_step"] == 4
    part = result["dist"]["zero3"]   # the trainable LoRA only: the start adapter is frozen
    assert part["trainable"] > 0 and part["partitioned"] == part["trainable"] and part["persistent"] == 0, part
    seen = sorted(i for r in range(WORLD) for rec in _samples(jd, r, 1) for i in rec["ids"])
    assert seen == sorted([f"harmful:{i}" for i in range(4)] + [f"train:{i}" for i in range(12)])
    assert [ckpt.step_of(p) for p in ckpt.complete_checkpoints(jd.checkpoints)] == [2, 4]

    from safetensors.torch import load_file

    # Gathered from the ZeRO-3 partitions: full shapes, trained (B starts at zero), trainable adapter only.
    adapter = load_file(jd.adapter / "adapter_model.safetensors")
    assert not (jd.adapter / "start").exists()
    assert {tuple(v.shape) for k, v in adapter.items() if "lora_A" in k} == {(4, 64)}
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert all(torch.isfinite(v).all() for v in adapter.values())

    # HF reloads ZeRO-3 partitions of a PEFT model (load_module_strict=False): steps 3-4 replay exactly.
    again = run_ranks(write_job_file(jd.root, attempt=2, resume_from=str(jd.checkpoints / "checkpoint-2"), **common),
                      WORLD, timeout=240)
    print(f"ZeRO-3 resume from checkpoint-2 (2 steps): {again.wall_s:.1f} s")
    _ok(again)
    first_losses, resumed_losses = _losses(jd, 1), _losses(jd, 2)
    assert sorted(resumed_losses) == [3, 4]
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(first_losses[step], rel=1e-5, abs=1e-6)


def test_zero3_partitioned_matches_zero2(tmp_path):
    """The same 4 steps under ZeRO-2 (LoRA whole on each rank) and ZeRO-3 with every LoRA tensor
    partitioned: the same losses and the same gathered adapter, within float tolerance."""
    training = tiny_training(batch_size=2, epochs=1, lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    data = {"train": DataSource(source=str(DATA / "sst2_mini.jsonl"), limit=16)}
    runs = {}
    for stage, ds in (("zero2", deepspeed_config("zero2", training, WORLD)), ("zero3", zero3_partitioning(training, WORLD))):
        jd = JobDir(tmp_path / stage)
        run = run_ranks(write_job_file(jd.root, training=training, deepspeed=ds, data=data,
                                       checkpoint=CheckpointSpec(every=100, keep=2),
                                       resources=Resources(gpus_per_node=WORLD)), WORLD, timeout=240)
        print(f"SFT {stage} (2 ranks, 4 steps): {run.wall_s:.1f} s")
        _ok(run)
        runs[stage] = jd
    part = json.loads(runs["zero3"].result.read_text())["dist"]["zero3"]
    assert part["partitioned"] == part["trainable"] > 0 and part["local_numel"] * WORLD == part["full_numel"], part
    assert "zero3" not in json.loads(runs["zero2"].result.read_text())["dist"]
    ref, got = _losses(runs["zero2"], 1), _losses(runs["zero3"], 1)
    assert sorted(ref) == sorted(got) == [1, 2, 3, 4]
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=2e-5), step

    from safetensors.torch import load_file

    a = load_file(runs["zero2"].adapter / "adapter_model.safetensors")
    b = load_file(runs["zero3"].adapter / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(v.abs().sum() > 0 for k, v in b.items() if "lora_B" in k)
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-4, atol=1e-6)

