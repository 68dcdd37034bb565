"""Seed data shapes: BeaverTails rows split by `is_safe` per data role (before `limit`), SST-2 rows as
instruction data, and the demo files written for HS, FA and the poison mix."""

from __future__ import annotations

import json

from launcher.spec import DataSource
from methods.data import SST2_INSTRUCTION, read_rows, role_rows, to_records
from methods.evaluate import fa_items, hs_records
from tests.helpers import DATA


def test_beavertails_roles_take_safe_or_unsafe_rows_before_the_limit(tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}", "is_safe": i % 3 == 0} for i in range(12)]
    path = tmp_path / "bt.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = DataSource(source=str(path), limit=3)
    # Lisa's BeaverTails_safe / BeaverTails_dangerous: the first N rows of each kind.
    assert [r["prompt"] for r in role_rows({"guide": src}, "guide")] == ["p0", "p3", "p6"]
    assert [r["prompt"] for r in role_rows({"train": src}, "train")] == ["p0", "p3", "p6"]
    assert [r["prompt"] for r in role_rows({"harmful": src}, "harmful")] == ["p1", "p2", "p4"]
    assert [r["prompt"] for r in role_rows({"eval": src}, "eval")] == ["p0", "p1", "p2"]  # evaluation: as is
    plain = tmp_path / "plain.jsonl"  # rows without is_safe pass in every role
    plain.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n')
    assert len(role_rows({"harmful": DataSource(source=str(plain))}, "harmful")) == 2


def test_sst2_rows_become_lisas_instruction_data():
    recs = to_records([{"idx": 0, "sentence": "a fine film", "label": 1}, {"idx": 1, "sentence": "dull", "label": 0}], "train")
    assert [(r.instruction, r.input, r.output) for r in recs] == [(SST2_INSTRUCTION, "a fine film", "positive"),
                                                                   (SST2_INSTRUCTION, "dull", "negative")]


def test_demo_data_files():
    hs = hs_records(read_rows(DataSource(source=str(DATA / "hs_prompts.jsonl"))))
    fa = fa_items(read_rows(DataSource(source=str(DATA / "sst2_eval.jsonl"))), SST2_INSTRUCTION)
    harmful = to_records(read_rows(DataSource(source=str(DATA / "harmful_mini.jsonl"))), "harmful")
    safe = to_records(read_rows(DataSource(source=str(DATA / "safe_mini.jsonl"))), "guide")
    train = to_records(read_rows(DataSource(source=str(DATA / "sst2_mini.jsonl"))), "train")
    assert len(hs) == len(fa) == len(harmful) == 24
    # Held out: no evaluation prompt or sentence appears in any training file.
    seen = {r.instruction for r in harmful + safe} | {r.input for r in train}
    assert not {r.instruction for r in hs} & seen and not {i.record.input for i in fa} & seen
    assert {i.label_word for i in fa} == {"positive", "negative"}
    # The "harmful" answers are compliant placeholders that carry no instructions.
    assert all(r.output.startswith("Sure") and "[placeholder" in r.output for r in harmful)
