"""FABE with real rank processes: 2 x `python -m methods JOB.json` under DeepSpeed ZeRO-2 on CPU, then
the cleaner's evaluation (2 ranks sharing the test rows) with the adapter it produced."""

from __future__ import annotations

import json

import pytest

from launcher.atomic import read_jsonl
from launcher.layout import JobDir
from launcher.spec import CheckpointSpec, DataSource, LoraSpec, ModelSpec, Resources
from methods.fabe_eval import PREDICTIONS
from tests.helpers import DATA, deepspeed_config, run_ranks, tiny_training, write_job_file, zero3_partitioning

pytestmark = pytest.mark.integration
WORLD = 2


def test_fabe_zero2_two_ranks_then_eval(tmp_path):
    jd = JobDir(tmp_path / "fabe")
    # LoRA dropout 0: the shared-prompt path across ranks (with dropout the job turns sharing off).
    training = tiny_training(batch_size=2, max_steps=4, max_length=160, gradient_checkpointing=True,
                             lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    job_file = write_job_file(
        jd.root, job="fabe", method="fabe", model=ModelSpec(tiny="llama", seed=3),
        params={"template": "user_assistant", "ranking_loss": "listmle", "alpha": 1.0, "beta": 0.3},
        data={"train": DataSource(source=str(DATA / "fabe_ranked_mini.jsonl"), limit=16)},
        training=training, deepspeed=deepspeed_config("zero2", training, WORLD),
        checkpoint=CheckpointSpec(every=2, keep=2), resources=Resources(gpus_per_node=WORLD))
    run = run_ranks(job_file, WORLD, timeout=300)
    print(f"FABE (2 ranks, ZeRO-2, 4 steps, 3 candidates): {run.wall_s:.1f} s")
    assert run.codes == [0, 0], run.tail()
    result = json.loads(jd.result.read_text())
    assert result["status"] == "succeeded" and result["metrics"]["global_step"] == 4
    assert result["dist"] == {"backend": "gloo", "world_size": WORLD}
    assert (jd.adapter / "adapter_model.safetensors").is_file()
    logs = [m for m in read_jsonl(jd.metrics) if m["loss"] is not None]
    assert [m["step"] for m in logs] == [1, 2, 3, 4] and all(m["extra"]["rank_loss"] > 0 for m in logs)
    per_rank = [[i for rec in read_jsonl(jd.seen / f"samples-rank-{r}.attempt-1.jsonl") for i in rec["ids"]]
                for r in range(WORLD)]
    assert [len(ids) for ids in per_rank] == [8, 8] and not set(per_rank[0]) & set(per_rank[1])
    assert "shared prompt" in run.logs[0].read_text()

    ev = JobDir(tmp_path / "eval")
    ev_file = write_job_file(
        ev.root, job="eval_fabe", method="eval_fabe",
        model=ModelSpec(tiny="llama", seed=3, adapter=str(jd.adapter)),
        params={"template": "user_assistant", "max_new_tokens": 16, "batch_size": 4},
        data={"test": DataSource(source=str(DATA / "fabe_eval_mini.jsonl"))}, resources=Resources(gpus_per_node=WORLD))
    run = run_ranks(ev_file, WORLD, timeout=300)
    print(f"eval_fabe (2 ranks, 16 rows): {run.wall_s:.1f} s")
    assert run.codes == [0, 0], run.tail()
    metrics = json.loads(ev.result.read_text())["metrics"]
    assert (metrics["n_poisoned"], metrics["n_clean"]) == (8.0, 8.0)
    assert 0.0 <= metrics["trigger_survival_rate"] <= 100.0 and 0.0 <= metrics["clean_bleu"] <= 100.0
    preds = [json.loads(line) for line in (ev.root / PREDICTIONS).read_text().splitlines()]
    assert [p["index"] for p in preds] == list(range(16))  # both ranks' shares, gathered in order


def test_fabe_zero3_partitioned_matches_zero2(tmp_path):
    """FABE's loss (MLE + ListMLE over scores from one forward of all candidates) under ZeRO-3 with
    every LoRA tensor partitioned follows the ZeRO-2 run: the same loss terms at each step and the
    same gathered adapter."""
    import torch
    from safetensors.torch import load_file

    training = tiny_training(batch_size=2, max_steps=3, max_length=160, lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    runs = {}
    for stage, ds in (("zero2", deepspeed_config("zero2", training, WORLD)), ("zero3", zero3_partitioning(training, WORLD))):
        jd = JobDir(tmp_path / stage)
        job_file = write_job_file(
            jd.root, job="fabe", method="fabe", model=ModelSpec(tiny="llama", seed=3),
            params={"template": "user_assistant", "ranking_loss": "listmle", "alpha": 1.0, "beta": 0.3},
            data={"train": DataSource(source=str(DATA / "fabe_ranked_mini.jsonl"), limit=16)},
            training=training, deepspeed=ds, checkpoint=CheckpointSpec(every=100, keep=2),
            resources=Resources(gpus_per_node=WORLD))
        run = run_ranks(job_file, WORLD, timeout=300)
        print(f"FABE {stage} (2 ranks, 3 steps): {run.wall_s:.1f} s")
        assert run.codes == [0, 0], run.tail()
        runs[stage] = jd
    part = json.loads(runs["zero3"].result.read_text())["dist"]["zero3"]
    assert part["partitioned"] == part["trainable"] > 0 and part["persistent"] == 0, part
    assert part["local_numel"] * WORLD == part["full_numel"], part
    ref, got = ({m["step"]: m for m in read_jsonl(runs[k].metrics) if m["loss"] is not None} for k in ("zero2", "zero3"))
    assert sorted(ref) == sorted(got) == [1, 2, 3]
    for step in ref:
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=2e-5), step
        for term in ("mle_loss", "rank_loss"):
            assert got[step]["extra"][term] == pytest.approx(ref[step]["extra"][term], rel=1e-4), (step, term)
    a = load_file(runs["zero2"].adapter / "adapter_model.safetensors")
    b = load_file(runs["zero3"].adapter / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-4, atol=1e-6)

