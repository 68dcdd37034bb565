"""SteerMoE analysis: batch structure, router choices vs the gate's own, RD invariants, selection."""

from __future__ import annotations

import pytest
import torch

from launcher.spec import DataSource
from methods.core.rank import RankInfo
from methods.data import Record, build_prompt, read_rows
from methods.models import byte_tokenizer, tiny_model
from methods.params import SteerMoEAnalysisParams
from methods.steermoe_analysis import (analyse, batch_inputs_response, batch_inputs_target, count_batch, report,
                                       select_experts, target_span, RoutingCounts)
from methods.steermoe_data import GROUPS, batches_from_rows, build_batches, pair_records
from tests.helpers import DATA

ONE_RANK = RankInfo(0, 0, 1)


def _records(group: str, n: int) -> list[Record]:
    return [Record(f"{group} prompt number {i}?", f"{group} answer {i}.", sample_id=f"{group}:{i}") for i in range(n)]


def test_batches_keep_k_safe_then_k_unsafe():
    s = build_batches(_records("safe", 10), _records("unsafe", 9), 3, 2)
    assert len(s.batches) == 3  # min(10 // 3, 9 // 2)
    assert s.batch_ids()[1] == ["safe:3", "safe:4", "safe:5", "unsafe:2", "unsafe:3"]
    assert all(b == list(range(b[0], b[0] + 5)) for b in s.batches)  # contiguous ranges
    assert [s.groups[i] for i in s.batches[2]] == ["safe"] * 3 + ["unsafe"] * 2
    with pytest.raises(ValueError, match="at least 8 safe"):
        build_batches(_records("safe", 7), _records("unsafe", 9), 8, 8)


def test_shipped_pairs():
    rows = read_rows(DataSource(source=str(DATA / "steermoe_pairs_mini.jsonl")))
    safe, unsafe = pair_records(rows)
    assert len(safe) == len(unsafe) == 32
    assert len(batches_from_rows(rows, 8, 8).batches) == 4
    with pytest.raises(KeyError, match="unsafe_response"):
        pair_records([{"safe_prompt": "a", "safe_response": "b", "unsafe_prompt": "c"}])


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def moe(tok):
    return tiny_model("olmoe", tok, {}, seed=3).eval()


@pytest.fixture(scope="module")
def samples():
    return build_batches(_records("safe", 6), _records("unsafe", 6), 3, 3)


def gate_hook_counts(model, samples, tok) -> RoutingCounts:
    """Independent of output_router_logits: forward hooks on every layer's gate read the router's own
    top-k indices, counted on the response tokens with plain Python loops."""
    layers, experts = model.config.num_hidden_layers, model.config.num_experts
    counts = RoutingCounts.empty(layers, experts, model.config.num_experts_per_tok)
    for batch in samples.batches:
        recs = [samples.records[i] for i in batch]
        inputs = batch_inputs_response(recs, "alpaca", tok, 512)
        seen: dict[int, torch.Tensor] = {}
        hooks = [model.model.layers[layer].mlp.gate.register_forward_hook(
            lambda mod, args, out, layer=layer, seen=seen: seen.__setitem__(layer, out[2].detach()))
            for layer in range(layers)]
        try:
            with torch.no_grad():
                model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        finally:
            for h in hooks:
                h.remove()
        b, t = inputs["input_ids"].shape
        for row, i in enumerate(batch):
            g = 1 if samples.groups[i] == "unsafe" else 0
            for pos in range(t):
                if inputs["token_mask"][row, pos]:
                    counts.tokens[g] += 1
                    for layer in range(layers):
                        for e in seen[layer].view(b, t, -1)[row, pos].tolist():
                            counts.activations[g, layer, e] += 1
    return counts


def test_router_choices_equal_the_gates_own_topk(tok, moe, samples):
    params = SteerMoEAnalysisParams(tokens="response", safe_per_batch=3, unsafe_per_batch=3)
    counts = analyse(moe, tok, samples, params, "alpaca", 512, ONE_RANK)
    ref = gate_hook_counts(moe, samples, tok)
    assert torch.equal(counts.tokens, ref.tokens) and torch.equal(counts.activations, ref.activations)


@pytest.mark.parametrize("tokens", ["response", "generated"])
def test_rd_sums_to_zero_and_activations_to_k_tokens(tok, moe, samples, tokens):
    params = SteerMoEAnalysisParams(tokens=tokens, safe_per_batch=3, unsafe_per_batch=3, max_new_tokens=6)
    counts = analyse(moe, tok, samples, params, "chat", 512, ONE_RANK)
    k = moe.config.num_experts_per_tok
    assert (counts.tokens > 0).all()
    for g in range(2):
        assert (counts.activations[g].sum(-1) == k * counts.tokens[g]).all()  # per layer
    rd = counts.risk_difference()
    assert torch.allclose(rd.sum(-1), torch.zeros(rd.shape[0], dtype=rd.dtype), atol=1e-12)
    assert rd.abs().max() > 0  # not vacuous: the groups route differently
    if tokens == "generated":
        assert counts.tokens.max() <= 6 * 6  # 6 samples per group, at most 6 new tokens each


def test_count_batch_only_counts_masked_tokens(tok, moe):
    counts = RoutingCounts.empty(2, 8, 2)
    ids = torch.tensor([[1, 40, 41, 42, 43], [1, 50, 51, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    token_mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    count_batch(moe, counts, ids, mask, token_mask, torch.tensor([False, True]))
    assert counts.tokens.tolist() == [2, 2]
    assert counts.activations.sum().item() == 2 * 2 * 2 * 2  # groups x tokens x layers x k


def test_selection_by_sign_threshold_and_top_n():
    rd = torch.tensor([[0.30, -0.10, 0.0, -0.40], [-0.05, 0.20, -0.40, 0.25]], dtype=torch.float64)
    assert select_experts(rd, None, None, "negative") == [(0, 3), (1, 2), (0, 1), (1, 0)]
    assert select_experts(rd, 2, None, "negative") == [(0, 3), (1, 2)]  # tie on |RD|: lower layer first
    assert select_experts(rd, None, 0.2, "positive") == [(0, 0), (1, 3), (1, 1)]
    assert select_experts(rd, 3, 0.1, "both") == [(0, 3), (1, 2), (0, 0)]
    assert (0, 2) not in select_experts(rd, None, None, "both")  # RD = 0 is linked to neither


def test_report_is_sorted_and_consistent(tok, moe, samples):
    params = SteerMoEAnalysisParams(tokens="response", safe_per_batch=3, unsafe_per_batch=3, top_n=4)
    counts = analyse(moe, tok, samples, params, "alpaca", 512, ONE_RANK)
    rep = report(counts, samples, params, "tiny-olmoe")
    absrd = [abs(r["rd"]) for r in rep["experts"]]
    assert absrd == sorted(absrd, reverse=True) and len(rep["experts"]) == 2 * 8
    assert all(r["rd"] == pytest.approx(r["p_safe"] - r["p_unsafe"]) for r in rep["experts"])
    assert len(rep["selected"]) <= 4 and all(s["rd"] < 0 for s in rep["selected"])
    assert rep["batches"] == samples.batch_ids() and rep["top_k"] == 2
    assert rep["token_counts"] == {"safe": int(counts.tokens[0]), "unsafe": int(counts.tokens[1])}


# ---- tokens: target (the official notebook's selection) -----------------------------------------------

SAME_PROMPT = [
    {"prompt": "Count to three.", "safe_response": "1, 2, 3", "unsafe_response": "one, two, three"},
    {"prompt": "Say hi.", "safe_response": "Hi!", "unsafe_response": "Hello there, friend."},
]


def hooked_choices(model, ids: list[int]) -> list[torch.Tensor]:
    """Per layer, the gate's own top-k experts for every position of one unpadded sequence."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [model.model.layers[layer].mlp.gate.register_forward_hook(
        lambda mod, args, out, layer=layer: seen.__setitem__(layer, out[2].detach()))
        for layer in range(model.config.num_hidden_layers)]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return [seen[layer].view(len(ids), -1) for layer in range(model.config.num_hidden_layers)]


@pytest.mark.parametrize("template", ["chat", "alpaca"])
def test_target_tokens_counted_by_hand(tok, moe, template):
    """One byte a token: the counted tokens are the answers' bytes, no EOS and no end-of-turn; the
    activations are the gate's own choices at exactly those positions, each sequence run alone."""
    samples = batches_from_rows(SAME_PROMPT, 1, 1, same_prompt=True)
    params = SteerMoEAnalysisParams(tokens="target", safe_per_batch=1, unsafe_per_batch=1)
    counts = analyse(moe, tok, samples, params, template, 512, ONE_RANK)
    safe_bytes = sum(len(r["safe_response"].encode()) for r in SAME_PROMPT)      # 7 + 3
    unsafe_bytes = sum(len(r["unsafe_response"].encode()) for r in SAME_PROMPT)  # 15 + 20
    assert counts.tokens.tolist() == [safe_bytes, unsafe_bytes] == [10, 35]

    layers, experts = moe.config.num_hidden_layers, moe.config.num_experts
    ref = torch.zeros((2, layers, experts), dtype=torch.long)
    for rec, group in zip(samples.records, samples.groups):
        if template == "chat":
            text = f"user: {rec.instruction}\nassistant: {rec.output}"  # TINY_CHAT_TEMPLATE, cut after the answer
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(build_prompt(rec, "alpaca") + rec.output)["input_ids"]  # BOS + bytes
        start = len(ids) - len(rec.output.encode())
        choices = hooked_choices(moe, ids)
        for pos in range(start, len(ids)):
            for layer in range(layers):
                for e in choices[layer][pos].tolist():
                    ref[GROUPS.index(group), layer, e] += 1
    assert torch.equal(counts.activations, ref)

    # `response` mode counts the same answers plus the EOS the data code appends, one per sample.
    response = analyse(moe, tok, samples, params.model_copy(update={"tokens": "response"}), template, 512, ONE_RANK)
    assert response.tokens.tolist() == [safe_bytes + 2, unsafe_bytes + 2]


def test_target_needs_same_prompt_pairs():
    rows = [{"safe_prompt": "a?", "safe_response": "b", "unsafe_prompt": "c?", "unsafe_response": "d"}]
    assert len(batches_from_rows(rows, 1, 1).batches) == 1  # fine for generated / response
    with pytest.raises(ValueError, match="train row 0: safe_prompt and unsafe_prompt differ.*give the row one 'prompt'"):
        batches_from_rows(rows, 1, 1, same_prompt=True)
    safe, unsafe = pair_records(SAME_PROMPT, same_prompt=True)
    assert [r.instruction for r in safe] == [r.instruction for r in unsafe] == ["Count to three.", "Say hi."]


def test_target_span_is_the_last_occurrence_and_long_rows_are_refused(tok):
    assert target_span([1, 2, 3, 1, 2, 9], [1, 2]) == (3, 5)  # the notebook uses the last location
    assert target_span([1, 2, 3], [2, 4]) is None and target_span([1, 2], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="safe:0: the conversation up to the end of its answer is .* raise training.max_length"):
        batch_inputs_target([Record("Say hi.", "Hi!", sample_id="safe:0")], "alpaca", tok, 8)
