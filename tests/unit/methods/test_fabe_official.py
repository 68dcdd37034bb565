"""FABE's official inference: the weighted vote and ASR by hand, diverse beam search against HF's own
beam search and a hand-computed score, the plan's victim params, and a run through a tiny victim."""

from __future__ import annotations

import json
import math

import pytest
import torch

from launcher.layout import JobDir
from launcher.plan import PlanError, load_plan
from launcher.resources import ClusterShape
from launcher.spec import DataSource, ModelSpec
from methods import fabe_eval
from methods.diverse_beam import group_beam_search
from methods.fabe_eval import PREDICTIONS, Prediction, VictimVote, cut_rewrite, victim_metrics, weighted_vote
from methods.greedy import left_pad
from methods.models import byte_tokenizer, tiny_model
from tests.helpers import DATA, make_job, save_random_adapter


def test_weighted_vote_by_hand():
    # weights softmax([0, ln 3]) = [1/4, 3/4]; 1/4 * [2, 0] + 3/4 * [0, 1] = [0.5, 0.75] -> class 1,
    # where the unweighted sum [2, 1] (or a majority of argmaxes, a tie) would not say class 1.
    pred, weights = weighted_vote(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, math.log(3.0)]))
    assert pred == 1 and weights == pytest.approx([0.25, 0.75])
    # Raw logits, as the official, not probabilities: logits [10, 0] and [0, 1] with weights [0.3, 0.7]
    # sum to [3.0, 0.7] -> class 0; their softmaxes ([1.00, 0.00], [0.27, 0.73]) would sum to [0.49, 0.51] -> 1.
    pred, _ = weighted_vote(torch.tensor([[10.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, math.log(0.7 / 0.3)]))
    assert pred == 0


def _pred(i: int, poisoned: bool, label: int, vote: int, each: list[int]) -> Prediction:
    v = VictimVote(label, ["r"] * len(each), [0.0] * len(each), [1 / len(each)] * len(each), vote, each)
    return Prediction(i, poisoned, ["cf"] if poisoned else [], "r", "r", False if poisoned else None, True, v)


def test_asr_and_clean_accuracy_by_hand():
    preds = [
        _pred(0, True, 0, 1, [1, 1, 0, 1]),   # attacked, fooled
        _pred(1, True, 0, 0, [0, 0, 0, 1]),   # attacked, defended
        _pred(2, True, 1, 1, [1, 1, 1, 1]),   # true label = target: not in ASR (OpenBackdoor's test-poison)
        _pred(3, False, 1, 1, [1, 0, 1, 1]),  # clean, right
        _pred(4, False, 0, 1, [1, 1, 1, 0]),  # clean, wrong
    ]
    m = victim_metrics(preds, target_label=1)
    assert m == {"n_asr": 2.0, "asr": 50.0, "asr_per_rewrite": 100.0 * 4 / 8,
                 "clean_accuracy": 50.0, "clean_accuracy_per_rewrite": 100.0 * 4 / 8}


def test_cut_rewrite():
    assert cut_rewrite("\n the film is good.\nExtra line", "first_line") == "the film is good."
    assert cut_rewrite(" a\nb ", "none") == "a\nb"


# ---- diverse beam search ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def lm(tok):
    return tiny_model("llama", tok, {}, seed=3).eval()


@pytest.fixture(scope="module")
def batch(tok):
    return left_pad([tok(t)["input_ids"] for t in ("def add(a, b):", "x = 1", "hello there")], tok.pad_token_id)


def _gen(lm, tok, batch, **kw):
    ids, mask = batch
    return lm.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=tok.pad_token_id,
                       output_scores=True, return_dict_in_generate=True, temperature=None, top_p=None, top_k=None, **kw)


def _until_eos(rows: torch.Tensor, eos: set[int]) -> list[list[int]]:
    out = []
    for row in rows.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        out.append(row[:cut + 1])
    return out


@pytest.mark.parametrize("eos", [87, [87, 72], 58])
@pytest.mark.parametrize("early_stopping", [False, True])
def test_one_group_is_hf_beam_search(lm, tok, batch, eos, early_stopping):
    """With one group, group beam search is beam search: same sequences (up to EOS: transformers 5
    pads finished ones with EOS when pad id is 0) and the same sequences_scores. The EOS ids are
    tokens this random model emits often, so hypotheses finish early and the EOS rules are exercised."""
    kw = dict(max_new_tokens=8, eos_token_id=eos, early_stopping=early_stopping, num_beams=4, num_return_sequences=3)
    ref = _gen(lm, tok, batch, **kw)
    mine = _gen(lm, tok, batch, num_beam_groups=1, custom_generate=group_beam_search, **kw)
    stops = {eos} if isinstance(eos, int) else set(eos)
    prompt = batch[0].shape[1]
    assert _until_eos(mine.sequences[:, prompt:], stops) == _until_eos(ref.sequences[:, prompt:], stops)
    assert torch.allclose(mine.sequences_scores, ref.sequences_scores, atol=1e-5)
    assert any(len(r) < 8 for r in _until_eos(ref.sequences[:, prompt:], stops))  # some finished early


def test_groups_without_penalty_are_greedy_and_scored_by_hand(lm, tok, batch):
    """Four groups of one beam and no penalty: each group is greedy, so all four rewrites are the greedy
    continuation, and its score is the mean log-probability of its tokens (length_penalty 1), computed
    here from one plain forward pass."""
    ids, mask = batch
    out = _gen(lm, tok, batch, max_new_tokens=6, eos_token_id=tok.eos_token_id, num_beams=4, num_beam_groups=4,
               diversity_penalty=0.0, num_return_sequences=4, custom_generate=group_beam_search)
    greedy = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, num_beams=1,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, temperature=None, top_p=None,
                         top_k=None)
    seqs = out.sequences.view(3, 4, -1)
    for b in range(3):
        for j in range(4):
            assert torch.equal(seqs[b, j], greedy[b])
        full_mask = torch.cat([mask[b:b + 1], torch.ones(1, 6, dtype=mask.dtype)], 1)
        with torch.no_grad():
            logits = lm(input_ids=greedy[b:b + 1], attention_mask=full_mask,
                        position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        p = ids.shape[1]
        by_hand = sum(float(lp[p - 1 + t, greedy[b, p + t]]) for t in range(6)) / 6
        assert out.sequences_scores.view(3, 4)[b].tolist() == pytest.approx([by_hand] * 4, abs=1e-4)


def test_diversity_penalty_makes_the_groups_differ(lm, tok, batch):
    out = _gen(lm, tok, batch, max_new_tokens=5, eos_token_id=tok.eos_token_id, num_beams=4, num_beam_groups=4,
               diversity_penalty=1e4, num_return_sequences=4, custom_generate=group_beam_search)
    first = out.sequences[:, batch[0].shape[1]].view(3, 4)
    assert all(len(set(row)) == 4 for row in first.tolist())   # a shared first token would cost 1e4
    scores = out.sequences_scores.view(3, 4)
    assert (scores[:, :-1] >= scores[:, 1:]).all() and (scores > -100).all()  # best first; no penalty paid


# ---- the plan's victim params ------------------------------------------------------------------------

PLAN = """\
jobs:
  fabe_eval:
    method: eval_fabe
    model: {{tiny: llama}}
    data: {{test: test.jsonl}}
    params: {{victim: {victim}}}
"""


@pytest.mark.parametrize("victim, key, words", [
    ("{model: /v, target_label: 1, num_beams: 6, num_beam_groups: 4}", "jobs.fabe_eval.params.victim",
     ["num_beams (6) must be a multiple of num_beam_groups (4)", "num_beams: 4, num_beam_groups: 4"]),
    ("{model: /v, target_label: 1, num_return_sequences: 5}", "jobs.fabe_eval.params.victim",
     ["num_return_sequences (5) cannot exceed num_beams (4)", "set num_return_sequences: 4"]),
    ("{model: /v}", "jobs.fabe_eval.params.victim.target_label", ["required key is missing"]),
    ("{model: /v, target_label: 1, beams: 4}", "jobs.fabe_eval.params.victim.beams", ["did you mean 'num_beams'"]),
])
def test_victim_params_problems_name_file_key_and_fix(tmp_path, victim, key, words):
    (tmp_path / "test.jsonl").write_text('{"instruction": "i", "input": "x", "output": "x", "label": 0}\n')
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(victim=victim))
    with pytest.raises(PlanError) as ei:
        load_plan(path, None, cluster=ClusterShape.single(1))
    [problem] = ei.value.problems
    assert (problem.file, problem.key) == (str(path), key)
    assert all(w in problem.message for w in words), problem.message


# ---- a run: tiny cleaner, tiny random victim saved as a HF model dir ---------------------------------

def _save_victim(path, tok) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=512, num_labels=2, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)


def test_eval_fabe_with_a_victim(tmp_path, monkeypatch, tok):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    rows = [json.loads(line) for line in (DATA / "fabe_eval_mini.jsonl").read_text().splitlines()]
    test = tmp_path / "test.jsonl"
    # Poisoned and clean rows alternate; labels 0, 0, 1, 1, ...: half of each kind has the target's label.
    test.write_text("".join(json.dumps({**r, "label": i // 2 % 2}) + "\n" for i, r in enumerate(rows)))
    _save_victim(tmp_path / "victim", tok)
    adapter = save_random_adapter(tmp_path / "cleaner", model_seed=3)
    job = make_job(tmp_path / "eval", job="eval_fabe", method="eval_fabe",
                   model=ModelSpec(tiny="llama", seed=3, adapter=str(adapter)),
                   params={"template": "user_assistant", "max_new_tokens": 6, "batch_size": 4,
                           "victim": {"model": str(tmp_path / "victim"), "target_label": 1, "rewrite_cut": "none"}},
                   data={"test": DataSource(source=str(test))})
    assert fabe_eval.run(job) == 0
    jd = JobDir(tmp_path / "eval")
    m = json.loads(jd.result.read_text())["metrics"]
    preds = [json.loads(line) for line in (jd.root / PREDICTIONS).read_text().splitlines()]
    assert len(preds) == 16 and m["judge"] == "victim victim"

    # Every vote again, by hand, through an independently loaded victim, one rewrite at a time.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    vtok = AutoTokenizer.from_pretrained(tmp_path / "victim")
    victim = AutoModelForSequenceClassification.from_pretrained(tmp_path / "victim").eval()
    votes = []
    for p in preds:
        v = p["vote"]
        assert len(v["rewrites"]) == 4 and v["sequence_scores"] == sorted(v["sequence_scores"], reverse=True)
        assert p["rewrite"] == v["rewrites"][0]
        with torch.no_grad():
            logits = [victim(**vtok(t, return_tensors="pt")).logits[0] for t in v["rewrites"]]
        w = [math.exp(s) for s in v["sequence_scores"]]
        w = [x / sum(w) for x in w]
        summed = [sum(w[j] * float(logits[j][c]) for j in range(4)) for c in range(2)]
        assert v["prediction"] == max(range(2), key=lambda c: summed[c])
        assert v["rewrite_predictions"] == [int(lg.argmax()) for lg in logits]
        votes.append(Prediction(**{**p, "vote": VictimVote(**v)}))
    attacked = [p for p in preds if p["poisoned"] and p["vote"]["label"] != 1]
    assert m["n_asr"] == len(attacked) == 4
    assert m["asr"] == pytest.approx(100.0 * sum(p["vote"]["prediction"] == 1 for p in attacked) / 4)
    assert {k: m[k] for k in victim_metrics(votes, 1)} == pytest.approx(victim_metrics(votes, 1))
    assert {"trigger_survival_rate", "clean_exact_match", "clean_bleu"} <= set(m)  # the proxies stay


def test_eval_fabe_with_a_victim_needs_labels(tmp_path, monkeypatch, tok):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    _save_victim(tmp_path / "victim", tok)
    job = make_job(tmp_path / "eval", job="eval_fabe", method="eval_fabe", model=ModelSpec(tiny="llama", seed=3),
                   params={"template": "user_assistant", "victim": {"model": str(tmp_path / "victim"), "target_label": 1}},
                   data={"test": DataSource(source=str(DATA / "fabe_eval_mini.jsonl"))})
    with pytest.raises(KeyError, match=r"test rows \[0, 1, 2, 3, 4\]\.\.\. have no 'label'"):
        fabe_eval.run(job)
