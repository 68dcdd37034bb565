"""The prompt-masked loss (METHODS.md "Common ground") against an independent reference computation."""

from __future__ import annotations

import math

import pytest
import torch

from methods.data import IGNORE_INDEX, Record, SFTCollator, build_prompt, encode_record
from methods.models import byte_tokenizer, tiny_model

RECORDS = [
    Record(instruction="Analyze the sentiment of the input, and respond only positive or negative",
           input="A warm and funny film.", output="positive", sample_id="train:0"),
    Record(instruction="Say hello", output="Hello there, friend!", sample_id="train:1"),
    Record(instruction="Count to three", output="one two three", sample_id="train:2"),
]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    m = tiny_model("llama", tok, {}, seed=11)
    m.eval()  # no dropout: the two computations must see the same function
    return m


def reference_sequences(tok, records):
    """Built without methods.data.encode: BOS + prompt bytes, then response bytes + EOS. The byte
    tokenizer has no merges, so the prompt's token count is its UTF-8 byte count (+1 for BOS)."""
    seqs = []
    for r in records:
        prompt = build_prompt(r, "alpaca")
        prompt_ids = [tok.bos_token_id] + [3 + b for b in prompt.encode()]
        response_ids = [3 + b for b in r.output.encode()] + [tok.eos_token_id]
        seqs.append((prompt_ids, response_ids))
    return seqs


def reference_loss(model, seqs) -> float:
    """Mean NLL of the response tokens only, sequence by sequence, with log_softmax by hand."""
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt_ids, response_ids in seqs:
            ids = torch.tensor([prompt_ids + response_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            for t in range(len(prompt_ids), ids.shape[1]):
                total -= logp[t - 1, ids[0, t]].item()  # token t is predicted from position t-1
                count += 1
    return total / count


def model_loss(model, batch) -> float:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.item()


def test_encoding_matches_reference_layout(tok):
    for rec, (prompt_ids, response_ids) in zip(RECORDS, reference_sequences(tok, RECORDS)):
        enc = encode_record(rec, "alpaca", tok, max_length=1024)
        assert enc.input_ids == prompt_ids + response_ids
        assert enc.labels == [IGNORE_INDEX] * len(prompt_ids) + response_ids
        assert enc.sample_id == rec.sample_id


def test_loss_equals_mean_response_nll(tok, model):
    batch = SFTCollator(tok.pad_token_id)([_item(encode_record(r, "alpaca", tok, 1024)) for r in RECORDS])
    assert batch["input_ids"].shape[0] == 3 and (batch["attention_mask"] == 0).any()  # padding present
    expected = reference_loss(model, reference_sequences(tok, RECORDS))
    assert model_loss(model, batch) == pytest.approx(expected, rel=1e-5)


def test_prompt_labels_do_not_matter(tok, model):
    # Same input, labels from a different prompt of the same token length: identical labels, same loss.
    a = Record(instruction="Describe the weather today", output="Sunny and mild.")
    b = Record(instruction="Xxxxxxxx xxx xxxxxxx xxxxx", output="Sunny and mild.")
    ea, eb = encode_record(a, "alpaca", tok, 1024), encode_record(b, "alpaca", tok, 1024)
    assert len(ea.input_ids) == len(eb.input_ids) and ea.input_ids != eb.input_ids
    assert ea.labels == eb.labels
    ids = torch.tensor([ea.input_ids])
    loss_a = model(input_ids=ids, labels=torch.tensor([ea.labels])).loss.item()
    loss_b = model(input_ids=ids, labels=torch.tensor([eb.labels])).loss.item()
    assert loss_a == loss_b
    # Not vacuous: the response labels do count.
    changed = list(ea.labels)
    changed[-2] = 3 + ord("?")
    assert model(input_ids=ids, labels=torch.tensor([changed])).loss.item() != loss_a


def test_pad_equal_eos_keeps_real_eos(tok, model):
    tok_pe = byte_tokenizer()
    tok_pe.pad_token = tok_pe.eos_token
    assert tok_pe.pad_token_id == tok_pe.eos_token_id
    encs = [encode_record(r, "alpaca", tok_pe, 1024) for r in RECORDS]
    for e in encs:
        assert e.input_ids[-1] == tok_pe.eos_token_id and e.labels[-1] == tok_pe.eos_token_id
    batch = SFTCollator(tok_pe.pad_token_id)([_item(e) for e in encs])
    for row, e in enumerate(encs):
        n = len(e.input_ids)
        assert batch["labels"][row, n - 1] == tok_pe.eos_token_id   # the real EOS is a label
        assert batch["attention_mask"][row, n - 1] == 1              # and is attended to
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()      # padding is not
        assert (batch["attention_mask"][row, n:] == 0).all()
    expected = reference_loss(model, reference_sequences(tok_pe, RECORDS))
    assert model_loss(model, batch) == pytest.approx(expected, rel=1e-5)
    # The trap: masking by `labels == pad_id` would drop every EOS and change the loss.
    wrong = batch["labels"].clone()
    wrong[wrong == tok_pe.pad_token_id] = IGNORE_INDEX
    assert not math.isclose(model_loss(model, {**batch, "labels": wrong}), expected, rel_tol=1e-5)


def _item(enc):
    return {"input_ids": enc.input_ids, "labels": enc.labels}
