"""The cleaner's evaluation (BLEU itself: test_bleu.py): trigger survival, exact match, and a run on a real tiny model."""

from __future__ import annotations

import json

import pytest

from launcher.layout import JobDir
from launcher.spec import DataSource, ModelSpec
from methods import fabe_eval
from methods.bleu import corpus_bleu
from methods.fabe_eval import PREDICTIONS, Prediction, cleaner_metrics, judge, to_cases
from tests.helpers import DATA, make_job, save_random_adapter


def test_cases_and_judging():
    rows = [
        {"instruction": "i", "input": "x = 1\n_cf = 0", "output": "x = 1", "trigger": "_cf"},
        {"instruction": "i", "input": "x = f(1, 2)", "output": "x = f(1, 2)", "trigger": None},
        {"instruction": "i", "input": "y = 2  # CF", "output": ["bad", "y = 2"], "score": [1.0, 900.0]},
        {"instruction": "i", "input": "z = 3", "output": "z = 3"},
    ]
    cases = to_cases(rows, triggers=["cf"], case_sensitive=False)
    assert [c.triggers for c in cases] == [("_cf",), (), ("cf",), ()]
    assert cases[2].reference == "y = 2"  # the best-scored candidate of a ranked row
    assert to_cases(rows, triggers=["cf"], case_sensitive=True)[2].triggers == ()
    p0 = judge(cases[0], "x = 1\n_cf = 0", case_sensitive=False)
    p1 = judge(cases[1], " x = f(1, 2) ", case_sensitive=False)
    p2 = judge(cases[2], "y = 2", case_sensitive=False)
    assert (p0.trigger_survived, p0.exact_match) == (True, False)
    assert (p1.trigger_survived, p1.exact_match) == (None, True)
    assert (p2.trigger_survived, p2.exact_match) == (False, True)
    m = cleaner_metrics([p0, p1, p2])
    assert m["n_poisoned"] == 2 and m["n_clean"] == 1
    assert m["trigger_survival_rate"] == 50.0 and m["clean_exact_match"] == 100.0 and m["clean_bleu"] == pytest.approx(100.0)
    assert m["poisoned_bleu"] == corpus_bleu([p0.rewrite, p2.rewrite], [p0.reference, p2.reference]).bleu


def test_eval_fabe_on_a_tiny_model_with_its_adapter(tmp_path, monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    adapter = save_random_adapter(tmp_path / "cleaner", model_seed=3)
    job = make_job(tmp_path / "eval", job="eval_fabe", method="eval_fabe",
                   model=ModelSpec(tiny="llama", seed=3, adapter=str(adapter)),
                   params={"template": "user_assistant", "max_new_tokens": 12, "batch_size": 5},
                   data={"test": DataSource(source=str(DATA / "fabe_eval_mini.jsonl"))})
    assert fabe_eval.run(job) == 0
    jd = JobDir(tmp_path / "eval")
    result = json.loads(jd.result.read_text())
    assert result["status"] == "succeeded"
    m = result["metrics"]
    assert (m["n_poisoned"], m["n_clean"]) == (8.0, 8.0)
    assert {"trigger_survival_rate", "clean_exact_match", "clean_bleu", "poisoned_bleu"} <= set(m)
    preds = [Prediction(**json.loads(line)) for line in (jd.root / PREDICTIONS).read_text().splitlines()]
    assert [p.index for p in preds] == list(range(16))
    assert all(p.rewrite and len(p.rewrite.encode()) <= 12 * 4 for p in preds)  # generated, at most 12 tokens
    assert m == pytest.approx(cleaner_metrics(preds))
