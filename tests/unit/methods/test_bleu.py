"""BLEU through sacreBLEU: its documented numbers, and the seed tokenisation's old numbers."""

from __future__ import annotations

import math

import pytest

from methods.bleu import corpus_bleu, sentence_bleu, tokenize
from methods.fabe_eval import Prediction, cleaner_metrics


def test_sacrebleu_documented_corpus_example():
    # sacreBLEU's README ("Using SacreBLEU from Python"): BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ...
    # hyp_len = 17 ref_len = 18), with two reference sets. Our API takes one reference per hypothesis,
    # so the two-reference case goes through sacreBLEU directly and we check that our wrapper agrees
    # with it on the first reference set alone.
    from sacrebleu.metrics import BLEU
    refs = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
            ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
    sys = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    doc = BLEU().corpus_score(sys, refs)
    assert round(doc.score, 2) == 48.53 and [round(p, 1) for p in doc.precisions] == [82.4, 50.0, 45.5, 37.5]
    assert (round(doc.bp, 3), doc.sys_len, doc.ref_len) == (0.943, 17, 18)
    ours = corpus_bleu(sys, refs[0])
    assert ours.bleu == pytest.approx(BLEU().corpus_score(sys, refs[:1]).score)
    assert ours.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")


def test_sentence_bleu_by_hand():
    assert sentence_bleu("The dog bit the man.", "The dog bit the man.").bleu == pytest.approx(100.0)
    # One substituted token out of six: p_n = 5/6, 4/5, 3/4, 2/3; BP = 1.
    s = sentence_bleu("a b c d e f", "a b c d e g")
    assert s.precisions == pytest.approx((5 / 6, 4 / 5, 3 / 4, 2 / 3))
    assert s.bleu == pytest.approx(100 * (1 / 3) ** 0.25) and round(s.bleu, 2) == 75.98
    assert "eff:yes" in s.signature   # effective order: what sacreBLEU recommends for single sentences


def test_tokenisations_differ_where_13a_keeps_tokens_whole():
    h, r = "x = 1.5 # don't", "x = 1.5 # do not"
    assert (corpus_bleu([h], [r]).hyp_len, corpus_bleu([h], [r], "seed").hyp_len) == (5, 9)
    with pytest.raises(ValueError, match="tokenisation"):
        corpus_bleu([h], [r], "spm")   # type: ignore[arg-type]


def test_seed_tokenisation_reproduces_the_old_numbers():
    """The vectors (and expected values) of the hand-written BLEU this replaced."""
    seed = "seed"
    assert corpus_bleu(["def f(x): return x"], ["def f(x): return x"], seed).bleu == pytest.approx(100.0)
    s = corpus_bleu(["a b c d e f"], ["a b c d e g"], seed)
    assert s.precisions == pytest.approx((5 / 6, 4 / 5, 3 / 4, 2 / 3))
    assert s.brevity_penalty == 1.0 and s.bleu == pytest.approx(100 * (1 / 3) ** 0.25)
    assert corpus_bleu(["a b c d"], ["a b c d e f"], seed).bleu == pytest.approx(100 * math.exp(-0.5))
    clipped = corpus_bleu(["the the the the"], ["the cat"], seed)
    assert clipped.precisions[0] == 0.25 and clipped.bleu == 0.0   # clipped, and unsmoothed
    assert corpus_bleu(["the the the the"], ["the cat"]).bleu > 0.0  # 13a: exp smoothing
    c = corpus_bleu(["a b c d e f", "a b c d"], ["a b c d e g", "a b c d"], seed)
    assert c.precisions == pytest.approx((9 / 10, 7 / 8, 5 / 6, 3 / 4)) and c.hyp_len == c.ref_len == 10
    assert tokenize("x=f(a, b)") == ["x", "=", "f", "(", "a", ",", "b", ")"]
    assert corpus_bleu([""], ["a"], seed).bleu == 0.0
    assert "tok:none|smooth:none" in c.signature


def test_cleaner_metrics_name_the_tokenisation():
    preds = [Prediction(0, False, [], "x = f(1.5, y)", "x = f(1.5, y)", None, True),
             Prediction(1, True, ["cf"], "return g(y) + 2", "return g(y) + 2", False, True)]
    m = cleaner_metrics(preds)
    assert m["clean_bleu"] == pytest.approx(100.0) and "tok:13a" in m["bleu_signature"]
    seeded = cleaner_metrics(preds, "seed")
    assert "clean_bleu" not in seeded and seeded["clean_bleu_seedtok"] == pytest.approx(100.0)
    assert seeded["poisoned_bleu_seedtok"] == pytest.approx(100.0) and "tok:none" in seeded["bleu_signature"]


def test_the_results_table_names_the_bleu_and_hides_its_signature() -> None:
    from launcher.report import JobInfo, results_table
    preds = [Prediction(0, False, [], "x = f(1.5, y)", "x = f(1.5, y)", None, True)]
    for tok, label in (("13a", "BLEU-4 (sacreBLEU 13a), clean inputs"), ("seed", "BLEU-4 (seed tokens), clean inputs")):
        j = JobInfo(name="fabe_eval", method="eval_fabe", state="succeeded", attempts=[], needs=[], params={},
                    result={"status": "succeeded", "metrics": cleaner_metrics(preds, tok)})
        rows = {r.metric: r.value for r in results_table([j])}
        assert rows[label] == pytest.approx(100.0) and not any("signature" in m for m in rows)
