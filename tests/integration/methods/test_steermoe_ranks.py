"""SteerMoE with real rank processes under DeepSpeed ZeRO-2 on CPU: the analysis (batches split over 2
ranks, counts summed), then expert-only training; the saved model is checked bitwise against the
initial one, and every rank's steps must be whole analysis batches, disjoint across ranks."""

from __future__ import annotations

import json

import pytest
import torch

from launcher.atomic import read_jsonl
from launcher.layout import JobDir
from launcher.spec import CheckpointSpec, DataSource, ModelSpec, Resources
from methods.models import byte_tokenizer, tiny_model
from methods.steermoe import MODEL_DIR
from methods.steermoe_analysis import EXPERTS_FILE
from tests.helpers import DATA, deepspeed_config, run_ranks, tiny_training, write_job_file

pytestmark = pytest.mark.integration
WORLD = 2
PARAMS = {"template": "chat", "safe_per_batch": 4, "unsafe_per_batch": 4, "top_n": 4, "tokens": "generated",
          "max_new_tokens": 8}


def test_steermoe_analysis_then_zero2_training(tmp_path):
    from transformers import OlmoeForCausalLM

    data = {"train": DataSource(source=str(DATA / "steermoe_pairs_mini.jsonl"), limit=16)}
    model = ModelSpec(tiny="olmoe", seed=5)

    # 1. A separate analysis job on 2 ranks (batch b on rank b % 2, counts all-reduced).
    an = JobDir(tmp_path / "analysis")
    run = run_ranks(write_job_file(an.root, job="analysis", method="steermoe_analysis", model=model, params=PARAMS,
                                   data=data, resources=Resources(gpus_per_node=WORLD)), WORLD, timeout=300)
    print(f"steermoe_analysis (2 ranks, 4 batches of 4+4): {run.wall_s:.1f} s")
    assert run.codes == [0, 0], run.tail()
    analysis = json.loads((an.root / EXPERTS_FILE).read_text())
    k = analysis["top_k"]
    assert analysis["num_batches"] == 4 and len(analysis["selected"]) == 4
    for layer in range(analysis["num_layers"]):
        rows = [r for r in analysis["experts"] if r["layer"] == layer]
        assert abs(sum(r["rd"] for r in rows)) < 1e-9
        assert sum(r["a_safe"] for r in rows) == k * analysis["token_counts"]["safe"]
        assert sum(r["a_unsafe"] for r in rows) == k * analysis["token_counts"]["unsafe"]

    # 2. Training on 2 ranks with ZeRO-2, its own analysis as the first phase, weight decay on.
    jd = JobDir(tmp_path / "train")
    training = tiny_training(batch_size=8, epochs=2, lr=5e-2, weight_decay=0.1, lora=None, max_length=160)
    job_file = write_job_file(
        jd.root, job="steermoe", method="steermoe", model=model, params=PARAMS, data=data, training=training,
        deepspeed=deepspeed_config("zero2", training, WORLD), checkpoint=CheckpointSpec(every=1, keep=2),
        resources=Resources(gpus_per_node=WORLD))
    run = run_ranks(job_file, WORLD, timeout=300)
    print(f"steermoe (2 ranks, ZeRO-2, analysis + 4 steps): {run.wall_s:.1f} s")
    assert run.codes == [0, 0], run.tail()
    result = json.loads(jd.result.read_text())
    assert result["status"] == "succeeded" and result["dist"] == {"backend": "gloo", "world_size": WORLD}
    assert result["metrics"]["global_step"] == 4 and result["metrics"]["frozen_changed"] == 0
    # The same analysis whether it ran as its own job or as the first phase (greedy, deterministic).
    trained_analysis = json.loads((jd.root / EXPERTS_FILE).read_text())
    assert trained_analysis["selected"] == analysis["selected"]
    assert trained_analysis["experts"] == analysis["experts"]

    # Whole analysis batches on every step; the two ranks never share a batch within an epoch.
    batches = [tuple(b) for b in analysis["batches"]]
    seen = {r: read_jsonl(jd.seen / f"samples-rank-{r}.attempt-1.jsonl") for r in range(WORLD)}
    for r in range(WORLD):
        assert [s["step"] for s in seen[r]] == [1, 2, 3, 4]
        assert all(tuple(s["ids"]) in batches for s in seen[r])
    for epoch_steps in ((0, 1), (2, 3)):
        used = [tuple(seen[r][i]["ids"]) for r in range(WORLD) for i in epoch_steps]
        assert sorted(used) == sorted(batches)  # each epoch: every batch exactly once, across the ranks

    # Bitwise: frozen tensors and non-selected expert slices as initialised; selected slices trained.
    selected = {(s["layer"], s["expert"]) for s in analysis["selected"]}
    trained = OlmoeForCausalLM.from_pretrained(jd.root / MODEL_DIR, dtype=torch.float32).state_dict()
    initial = tiny_model("olmoe", byte_tokenizer(), {}, seed=5).state_dict()
    moved = set()
    for name, ref in initial.items():
        w = trained[name]
        if ".mlp.experts." not in name:
            assert torch.equal(w, ref), name
            continue
        layer = int(name.split(".layers.")[1].split(".")[0])
        for e in range(w.shape[0]):
            if (layer, e) not in selected:
                assert torch.equal(w[e], ref[e]), (name, e)
            elif not torch.equal(w[e], ref[e]):
                moved.add((layer, e))
    assert moved == selected

    # 3. Resume mid-epoch from checkpoint-3: the saved analysis is reused, step 4 replays the same batches
    # (the loader skips what the epoch already used) and the same loss.
    losses = {m["step"]: m["loss"] for m in read_jsonl(jd.metrics) if m["attempt"] == 1 and m["loss"] is not None}
    again = run_ranks(write_job_file(jd.root, job="steermoe", method="steermoe", model=model, params=PARAMS, data=data,
                                     training=training, deepspeed=deepspeed_config("zero2", training, WORLD),
                                     checkpoint=CheckpointSpec(every=1, keep=2), resources=Resources(gpus_per_node=WORLD),
                                     attempt=2, resume_from=str(jd.checkpoints / "checkpoint-3")), WORLD, timeout=300)
    print(f"steermoe resume from checkpoint-3: {again.wall_s:.1f} s")
    assert again.codes == [0, 0], again.tail()
    assert "experts from" in again.logs[0].read_text()
    for r in range(WORLD):
        resumed = read_jsonl(jd.seen / f"samples-rank-{r}.attempt-2.jsonl")
        assert resumed == seen[r][3:]
    resumed_losses = {m["step"]: m["loss"] for m in read_jsonl(jd.metrics) if m["attempt"] == 2 and m["loss"] is not None}
    assert sorted(resumed_losses) == [4]
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(losses[step], rel=1e-5, abs=1e-6)
