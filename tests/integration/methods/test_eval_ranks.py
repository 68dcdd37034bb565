"""Evaluation jobs as rank processes: prompts sharded over 2 ranks and gathered, a trained stage-2
adapter evaluated on top of its stage-1 adapter, and real numbers from the real SmolLM2 model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.spec import DataSource, LoraSpec, ModelSpec, Resources
from methods import sft
from methods.judges import KeywordJudge
from tests.helpers import DATA, make_job, run_ranks, save_random_adapter, tiny_training, write_job_file

pytestmark = pytest.mark.integration


def eval_job(job_dir: Path, method: str, model: ModelSpec, data: str, world: int, **params) -> Path:
    return write_job_file(job_dir, method=method, job=job_dir.name, model=model, params=params, deepspeed=None,
                          data={"eval": DataSource(source=str(DATA / data))}, resources=Resources(gpus_per_node=world))


def test_two_ranks_give_the_one_rank_results_for_a_stacked_chain(tmp_path, monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    stage1 = save_random_adapter(tmp_path / "stage1" / "adapter", model_seed=3)
    (tmp_path / "stage1" / "result.json").write_text(json.dumps({"status": "succeeded", "adapter": str(stage1)}))
    job2 = make_job(tmp_path / "stage2", model=ModelSpec(tiny="llama", seed=3, adapter=str(stage1), adapter_mode="stack"),
                    data={"train": DataSource(source=str(DATA / "sst2_mini.jsonl"), limit=8)},
                    training=tiny_training(lora=LoraSpec(r=4, alpha=8, dropout=0.0)))
    assert sft.run(job2) == 0
    model = ModelSpec(tiny="llama", seed=3, adapter=str(tmp_path / "stage2" / "adapter"))

    outputs = {}
    for world in (1, 2):
        for method, data, tokens in (("eval_hs", "hs_prompts.jsonl", 12), ("eval_fa", "sst2_eval.jsonl", 3)):
            jd = tmp_path / f"{method}-{world}"
            run = run_ranks(eval_job(jd, method, model, data, world, template="alpaca", num_samples=7, batch_size=1,
                                  max_new_tokens=tokens), world, timeout=240)
            assert run.codes == [0] * world, run.tail()
            result = json.loads((jd / "result.json").read_text())
            assert result["model"]["adapters"] == [str(stage1), str(tmp_path / "stage2" / "adapter")]
            assert result["dist"]["world_size"] == world
            outputs[method, world] = (result["metrics"], json.loads((jd / "stage2").read_text()))
    for method in ("eval_hs", "eval_fa"):
        assert outputs[method, 2] == outputs[method, 1]  # every prompt once, in order, same answers
        assert outputs[method, 1][0]["n"] == 7.0
    hs_items = outputs["eval_hs", 1][1]
    assert len(hs_items) == 7 and any(i["output"] for i in hs_items)


def test_smollm2_hs_and_fa(tmp_path):
    """The real instruct model: answers are real text and the numbers follow from them."""
    model = ModelSpec(gguf="smollm2")
    hs_dir, fa_dir = tmp_path / "hs", tmp_path / "fa"
    run = run_ranks(eval_job(hs_dir, "eval_hs", model, "hs_prompts.jsonl", 2, num_samples=4, batch_size=2,
                          max_new_tokens=16), 2, timeout=600)   # first use converts the GGUF
    print(f"SmolLM2 eval_hs (2 ranks, 4 prompts): {run.wall_s:.1f} s")
    assert run.codes == [0, 0], run.tail()
    result = json.loads((hs_dir / "result.json").read_text())
    preds = json.loads((hs_dir / "smollm2").read_text())
    assert result["model"]["template"] == "chat" and len(preds) == 4
    assert all(len(p["output"].split()) >= 3 for p in preds)  # a pretrained model writes sentences
    flagged = sum(v.flagged for v in KeywordJudge().judge([], [p["output"] for p in preds]))
    assert result["metrics"] == {"non_refusal": 25.0 * flagged, "n": 4.0} and result["judge"] == "refusal_keywords"
    assert json.loads((hs_dir / "smollm2_sentiment_eval.json").read_text())[-1] == f"final  score:{25.0 * flagged:.2f}"

    run = run_ranks(eval_job(fa_dir, "eval_fa", model, "sst2_eval.jsonl", 1, num_samples=4, batch_size=4, max_new_tokens=3),
                 1, timeout=240)
    print(f"SmolLM2 eval_fa (1 rank, 4 sentences): {run.wall_s:.1f} s")
    assert run.codes == [0], run.tail()
    result = json.loads((fa_dir / "result.json").read_text())
    items = json.loads((fa_dir / "smollm2").read_text())
    correct = sum(i["correct"] == "true" for i in items[:-1])
    assert all(i["output"] for i in items[:-1])
    assert result["metrics"] == {"fa": 25.0 * correct, "n": 4.0} and result["counts"]["correct"] == correct
