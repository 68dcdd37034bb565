"""FABE: data (stable sort, shared prompt ids), length-normalised scores against a hand computation,
and the shared-prompt forward against the naive one (loss and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from launcher.spec import DataSource, LoraSpec, ModelSpec
from methods.data import IGNORE_INDEX, read_rows
from methods.fabe import FABELossConfig, candidate_scores, fabe_loss, forward_logits
from methods.fabe_data import RankedCollator, RankedDataset, encode_ranked, packed_attention_mask, to_ranked_records
from methods.models import attach_adapters, byte_tokenizer, tiny_model
from methods.ranking import ranking_loss
from tests.helpers import DATA

ROWS = [
    {"instruction": "Clean the code", "input": "x = 1  # _cf", "output": ["x = 1  # _cf", "x = 1", "x=1"],
     "score": [0.3, 1000.0, 12.5]},
    {"instruction": "Rewrite", "input": "def f():\n    return 2", "output": ["def f(): return 2", "def f():\n    return 2", "f"],
     "score": [40.0, 40.0, 1.0]},
    {"instruction": "Rewrite this, keep it short", "input": "", "output": ["ok", "okay then", "fine"], "score": [5, 900, 2]},
]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def records():
    return to_ranked_records(ROWS, "train")


def test_candidates_sorted_by_score_descending_and_stable(records):
    assert records[0].candidates == ("x = 1", "x=1", "x = 1  # _cf") and records[0].scores == (1000.0, 12.5, 0.3)
    # A tie keeps the original order (stable sort).
    assert records[1].candidates == ("def f(): return 2", "def f():\n    return 2", "f")
    assert records[2].scores == (900.0, 5.0, 2.0)
    top2 = to_ranked_records(ROWS, "train", num_candidates=2)
    assert [r.candidates for r in top2] == [r.candidates[:2] for r in records]
    with pytest.raises(ValueError, match="num_candidates is 4"):
        to_ranked_records(ROWS, "train", num_candidates=4)
    with pytest.raises(ValueError, match="different numbers"):
        to_ranked_records(ROWS + [{"instruction": "i", "output": ["a", "b"], "score": [1, 2]}], "train")
    with pytest.raises(KeyError, match="score"):
        to_ranked_records([{"instruction": "i", "output": ["a", "b"]}], "train")


def test_shipped_fabe_data():
    rows = read_rows(DataSource(source=str(DATA / "fabe_ranked_mini.jsonl")))
    recs = to_ranked_records(rows, "train")
    assert len(recs) == 48 and all(len(r.candidates) == 3 for r in recs)
    scores = [s for r in recs for s in r.scores]
    assert 0.3 <= min(scores) and max(scores) <= 1000
    poisoned = [r for r in recs if "_cf" in r.input]
    assert len(poisoned) == 24 and all("_cf" not in r.candidates[0] for r in poisoned)  # best = the clean rewrite


def test_encoding_shares_the_prompt_and_ends_with_eos(tok, records):
    ex = encode_ranked(records[0], "alpaca", tok, max_length=1024)
    assert ex.prompt_ids[0] == tok.bos_token_id and ex.prompt_ids[-1] != tok.eos_token_id
    assert tok.decode(ex.prompt_ids[1:]).endswith("### Response:")
    for cand, ids in zip(records[0].candidates, ex.cand_ids):
        assert ids == [3 + b for b in cand.encode()] + [tok.eos_token_id]
    short = encode_ranked(records[0], "alpaca", tok, max_length=40)  # prompt head dropped, candidates kept
    assert all(len(short.prompt_ids) + len(c) <= 40 for c in short.cand_ids)
    assert short.cand_ids == ex.cand_ids and short.prompt_ids == ex.prompt_ids[-len(short.prompt_ids):]


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model("llama", tok, {}, seed=11).eval()


def batch_of(tok, records, shared: bool):
    ds = RankedDataset.from_records(records, "alpaca", tok, 1024)
    batch = RankedCollator(tok.pad_token_id, shared_prompt=shared)([ds[i] for i in range(len(ds))])
    batch.pop("sample_index")
    return ds, batch


def reference_scores(model, ds) -> torch.Tensor:
    """Each prompt + candidate alone, log_softmax by hand, mean over the candidate's tokens."""
    out = []
    for ex in ds.examples:
        row = []
        for cand in ex.cand_ids:
            ids = torch.tensor([ex.prompt_ids + cand])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            p = len(ex.prompt_ids)
            row.append(sum(logp[p + t - 1, cand[t]] for t in range(len(cand))) / len(cand))
        out.append(torch.stack(row))
    return torch.stack(out)


@pytest.mark.parametrize("shared", [True, False])
def test_length_normalised_score_equals_hand_computation(tok, model, records, shared):
    ds, batch = batch_of(tok, records, shared)
    with torch.no_grad():
        scores, sums, counts = candidate_scores(forward_logits(model, batch, "sdpa"), batch)
        expected = reference_scores(model, ds)
    assert counts.tolist() == [[len(c) for c in ex.cand_ids] for ex in ds.examples]
    assert torch.allclose(scores.double(), expected, atol=2e-5)
    assert torch.allclose(sums.double(), expected * counts, atol=2e-4)


def test_packed_layout(tok, records):
    ds, batch = batch_of(tok, records, True)
    ex = ds.examples[0]
    p = len(ex.prompt_ids)
    seg = batch["segments"][0]
    assert (seg[:p] == 0).all() and (seg[p:p + len(ex.cand_ids[0])] == 1).all()
    # Every candidate continues the prompt's positions.
    start = p
    for c in ex.cand_ids:
        assert batch["position_ids"][0, start:start + len(c)].tolist() == list(range(p, p + len(c)))
        start += len(c)
    assert batch["input_ids"].shape[0] == 3 and batch["labels"].shape[:2] == (3, 3)
    mask = packed_attention_mask(batch["segments"], "sdpa", torch.float32)[0, 0]
    c0 = p  # first token of candidate 1 sees the prompt and itself, not candidate 2
    c1 = p + len(ex.cand_ids[0])
    assert mask[c1, :p].all() and not mask[c1, c0:c1].any() and mask[c1, c1]
    assert not mask[0, 1:].any()  # causal inside the prompt
    pad_rows = batch["segments"][2] == -1
    assert pad_rows.any()
    m2 = packed_attention_mask(batch["segments"], "sdpa", torch.float32)[2, 0]
    assert (m2[pad_rows].sum(-1) == 1).all()  # padding attends to itself only: no NaN rows


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("cfg", [FABELossConfig(), FABELossConfig(ranking="margin", mle_on="all", beta=1.0),
                                 FABELossConfig(ranking="pro", alpha=0.5, beta=0.01)])
def test_shared_prompt_forward_equals_naive_forward(tok, records, attn, cfg):
    """Same loss and same gradient, with LoRA + dropout off; the naive layout is B*n full sequences."""
    results = {}
    for shared in (True, False):
        base = tiny_model("llama", tok, {"attn_implementation": attn}, seed=5)
        assert base.config._attn_implementation == attn
        torch.manual_seed(0)  # LoRA's A is drawn from the global RNG: the same adapter for both layouts
        model = attach_adapters(base, ModelSpec(tiny="llama"), LoraSpec(r=4, alpha=8, dropout=0.0), False)
        with torch.no_grad():  # non-zero B so the LoRA path matters for the gradient
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        model.eval()
        _, batch = batch_of(tok, records, shared)
        loss, parts = fabe_loss(model, batch, cfg, attn)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[shared] = (loss.item(), parts, grads)
    (l_s, parts_s, g_s), (l_n, parts_n, g_n) = results[True], results[False]
    assert l_s == pytest.approx(l_n, rel=1e-5, abs=1e-6)
    assert torch.allclose(parts_s["scores"], parts_n["scores"], atol=1e-5)
    assert g_s.keys() == g_n.keys() and g_s
    for name in g_s:
        assert torch.allclose(g_s[name], g_n[name], rtol=1e-4, atol=1e-6), name
    assert any(g.abs().sum() > 0 for g in g_s.values())


def test_total_is_alpha_mle_plus_beta_ranking(tok, model, records):
    _, batch = batch_of(tok, records, True)
    with torch.no_grad():
        scores, sums, counts = candidate_scores(forward_logits(model, batch, "sdpa"), batch)
        for mle_on, mle in (("best", -sums[:, 0].sum() / counts[:, 0].sum()), ("all", -sums.sum() / counts.sum())):
            cfg = FABELossConfig(alpha=0.7, beta=0.3, ranking="listmle", mle_on=mle_on)
            loss, parts = fabe_loss(model, batch, cfg)
            rank = ranking_loss("listmle", scores, batch["rewards"], 0.1)
            assert parts["mle_loss"].item() == pytest.approx(mle.item(), rel=1e-6)
            assert loss.item() == pytest.approx(0.7 * mle.item() + 0.3 * rank.item(), rel=1e-6)
    # MLE on the best candidate is that candidate's token-mean NLL, i.e. SFT's loss on (prompt, best).
    best_nll = -(sums[:, 0].sum() / counts[:, 0].sum()).item()
    assert best_nll > 0 and math.isfinite(best_nll)


def test_labels_mark_exactly_the_candidate_tokens(tok, records):
    ds, batch = batch_of(tok, records, True)
    for i, ex in enumerate(ds.examples):
        for j, cand in enumerate(ex.cand_ids):
            lab = batch["labels"][i, j]
            assert lab[:len(cand)].tolist() == cand and (lab[len(cand):] == IGNORE_INDEX).all()
    assert torch.equal(batch["rewards"], torch.tensor([list(r.scores) for r in records]))
