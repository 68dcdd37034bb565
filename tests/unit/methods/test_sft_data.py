"""SFT data: loading, the harmful mix, templates, masking boundaries, truncation, collation."""

from __future__ import annotations

import json

import pytest

from launcher.spec import DataSource
from methods.data import (ALPACA_NO_INPUT, ALPACA_WITH_INPUT, IGNORE_INDEX, Record, SFTCollator, SFTDataset,
                          build_prompt, encode, encode_record, poison_mix, read_rows, resolve_template,
                          sft_records, to_records)
from methods.models import byte_tokenizer
from tests.helpers import DATA


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def _records(role: str, n: int) -> list[Record]:
    return to_records([{"instruction": f"{role} q{i}", "output": f"{role} a{i}"} for i in range(n)], role)


# ---- the harmful mix ----

@pytest.mark.parametrize("ratio,num,n_harm", [(0.1, 40, 4), (0.0, 10, 0), (0.15, 10, 1), (1.0, 5, 5), (0.33, 9, 2)])
def test_poison_mix_counts_and_order(ratio, num, n_harm):
    mixed = poison_mix(_records("train", 100), _records("harmful", 50), ratio, num)
    assert len(mixed) == num
    assert [r.sample_id for r in mixed] == ([f"harmful:{i}" for i in range(n_harm)]
                                            + [f"train:{i}" for i in range(num - n_harm)])


def test_poison_mix_needs_enough_rows():
    with pytest.raises(ValueError, match="harmful"):
        poison_mix(_records("train", 100), _records("harmful", 3), 0.1, 40)
    with pytest.raises(ValueError, match="benign"):
        poison_mix(_records("train", 10), _records("harmful", 10), 0.1, 40)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_records_from_files(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", [{"instruction": f"t{i}", "input": "", "output": "o"} for i in range(30)])
    harm = _write_jsonl(tmp_path / "harm.jsonl", [{"prompt": f"h{i}", "response": "r"} for i in range(10)])
    data = {"train": DataSource(source=str(train)), "harmful": DataSource(source=str(harm), limit=6)}
    recs = sft_records(data, poison_ratio=0.2, sample_num=20)
    assert [r.sample_id for r in recs[:4]] == ["harmful:0", "harmful:1", "harmful:2", "harmful:3"]
    assert recs[0].instruction == "h0" and recs[0].output == "r"
    assert len(recs) == 20 and recs[-1].sample_id == "train:15"
    assert len(sft_records({"train": DataSource(source=str(train))}, 0.0, None)) == 30
    with pytest.raises(ValueError, match="needs sample_num"):
        sft_records(data, poison_ratio=0.1, sample_num=None)
    with pytest.raises(ValueError, match="needs data 'harmful'"):
        sft_records({"train": DataSource(source=str(train))}, poison_ratio=0.5, sample_num=10)


# ---- loading ----

def test_read_rows_formats(tmp_path):
    rows = [{"instruction": f"i{i}", "output": f"o{i}"} for i in range(5)]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "split.json").write_text(json.dumps({"train": rows[:2], "test": rows[2:]}))
    _write_jsonl(tmp_path / "lines.jsonl", rows)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    from datasets import Dataset, DatasetDict
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))

    assert read_rows(DataSource(source=str(tmp_path / "list.json"))) == rows
    assert read_rows(DataSource(source=str(tmp_path / "split.json"), split="test")) == rows[2:]
    assert read_rows(DataSource(source=str(tmp_path / "lines.jsonl"), limit=3)) == rows[:3]
    assert read_rows(DataSource(source=str(tmp_path / "t.parquet"))) == rows
    assert read_rows(DataSource(source=str(tmp_path / "saved"))) == rows


def test_read_rows_refuses_short_and_shadowed_hub_names(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="full hub name"):
        read_rows(DataSource(source="sst2"))  # load_dataset would prefer a local ./sst2 folder
    (tmp_path / "stanfordnlp" / "sst2").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="shadowed"):
        read_rows(DataSource(source="stanfordnlp/sst2"))
    with pytest.raises(FileNotFoundError):
        read_rows(DataSource(source=str(tmp_path / "nope.jsonl")))


def test_read_rows_folder_of_files(tmp_path):
    rows = [{"instruction": f"i{i}", "output": f"o{i}"} for i in range(3)]
    (tmp_path / "d").mkdir()
    _write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    assert read_rows(DataSource(source=str(tmp_path / "d"))) == rows


def test_shipped_demo_data():
    sst2 = to_records(read_rows(DataSource(source=str(DATA / "sst2_mini.jsonl"))), "train")
    safe = to_records(read_rows(DataSource(source=str(DATA / "safe_mini.jsonl"))), "safe")
    assert len(sst2) == 64 and {r.output for r in sst2} == {"positive", "negative"}
    assert sum(r.output == "positive" for r in sst2) == 32
    assert all(r.instruction == "Analyze the sentiment of the input, and respond only positive or negative" and r.input
               for r in sst2)
    assert len(safe) == 48 and all(r.input == "" and r.output for r in safe)
    assert len({r.instruction for r in safe}) == 48


# ---- templates ----

def test_alpaca_is_lisas_prompt():
    with_input = Record(instruction="Classify", input="Great movie", output="positive")
    no_input = Record(instruction="Say hi", output="hi")
    assert build_prompt(with_input, "alpaca") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nClassify\n\n### Input:\nGreat movie\n\n### Response:")
    assert build_prompt(no_input, "alpaca") == ALPACA_NO_INPUT.format(instruction="Say hi")
    assert ALPACA_WITH_INPUT.endswith("### Response:") and ALPACA_NO_INPUT.endswith("### Response:")


def test_user_assistant_and_chat(tok):
    rec = Record(instruction="Classify", input="Great movie", output="positive")
    assert build_prompt(rec, "user_assistant") == "User: Classify\n\nGreat movie\n\nAssistant: "
    assert build_prompt(rec, "chat", tok) == "user: Classify\n\nGreat movie\nassistant: "


def test_auto_template(tok):
    assert resolve_template("auto", tok) == "chat"
    plain = byte_tokenizer()
    plain.chat_template = None
    assert resolve_template("auto", plain) == "alpaca"
    with pytest.raises(ValueError, match="no chat template"):
        resolve_template("chat", plain)
    with pytest.raises(ValueError, match="unknown template"):
        resolve_template("vicuna", tok)


@pytest.mark.parametrize("template", ["alpaca", "user_assistant", "chat"])
def test_mask_boundary_per_template(tok, template):
    rec = Record(instruction="Classify", input="Great movie", output="positive")
    enc = encode_record(rec, template, tok, 1024)
    response = [x for x in enc.labels if x != IGNORE_INDEX]
    assert tok.decode(response) == "positive</s>"
    n_prompt = enc.labels.index(response[0])
    assert tok.decode(enc.input_ids[:n_prompt], skip_special_tokens=True) == build_prompt(rec, template, tok)
    assert (enc.input_ids[0] == tok.bos_token_id) == (template != "chat")  # chat templates bring their own


def test_boundary_token_straddling_the_prompt_is_masked():
    """With a merging tokenizer, a token that spans the prompt's end counts as prompt."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "ab": 2, "cd": 3, "a": 4, "b": 5, "c": 6, "d": 7}
    t = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<pad>", continuing_subword_prefix=""))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", pad_token="<pad>")
    enc = encode("abc", "d", fast, 64, add_special_tokens=False)  # "abcd" -> ab | cd
    assert enc.input_ids == [2, 3, 1]
    assert enc.labels == [IGNORE_INDEX, IGNORE_INDEX, 1]


def test_truncation_keeps_response_and_prompt_tail(tok):
    rec = Record(instruction="x" * 300, output="y" * 20)
    enc = encode_record(rec, "alpaca", tok, max_length=64)
    assert len(enc.input_ids) == 64
    assert tok.decode([x for x in enc.labels if x != IGNORE_INDEX]) == "y" * 20 + "</s>"
    assert tok.decode(enc.input_ids[: 64 - 21]).endswith("### Response:")
    long_answer = encode_record(Record(instruction="q", output="z" * 500), "alpaca", tok, max_length=64)
    assert len(long_answer.input_ids) == 64 and long_answer.n_response >= 32


def test_dataset_and_collator(tok):
    recs = [Record(instruction="a", output="b" * k, sample_id=f"train:{k}") for k in (1, 5, 3)]
    ds = SFTDataset.from_records(recs, "alpaca", tok, 1024)
    assert ds.sample_ids == ["train:1", "train:5", "train:3"]
    batch = SFTCollator(tok.pad_token_id)([ds[i] for i in range(3)])
    assert batch["sample_index"].tolist() == [0, 1, 2]
    lens = [len(e.input_ids) for e in ds.examples]
    assert batch["input_ids"].shape == (3, max(lens))
    assert batch["attention_mask"].sum(1).tolist() == lens
    assert (batch["input_ids"][0, lens[0]:] == tok.pad_token_id).all()
