"""Instruction data for prompt-masked SFT: loading, the harmful mix, templates, tokenisation, collation.

A sample is `prompt + response + eos`; its labels are the input ids with the prompt positions and the
padding set to -100, by position (METHODS.md "Common ground"). The model shifts labels itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from launcher.contract import DataSource

IGNORE_INDEX = -100
Template = Literal["auto", "alpaca", "user_assistant", "chat"]
TEMPLATES: tuple[str, ...] = ("auto", "alpaca", "user_assistant", "chat")

# Lisa's train.py PROMPT_DICT, verbatim (git-disl/Lisa): note "### Response:" has no trailing newline,
# so the response follows the colon directly, as in Lisa's training data.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
USER_ASSISTANT = "User: {text}\n\nAssistant: "
# Lisa's sst2/build_dataset.py and sst2/pred_eval.py: the instruction and label words of SST-2.
SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"
SST2_LABELS = ("negative", "positive")


def sst2_label_word(label: Any) -> str:
    """0 -> negative, anything else -> positive, as build_dataset.py writes it."""
    return SST2_LABELS[0] if int(label) == 0 else SST2_LABELS[1]


@dataclass(frozen=True)
class Record:
    instruction: str
    output: str
    input: str = ""
    sample_id: str = ""  # "<data role>:<row>", stable across ranks, attempts and restarts

    @property
    def user_text(self) -> str:
        """Instruction and input as one user message (templates without an input slot)."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    sample_id: str

    @property
    def n_response(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


# ---- loading ----------------------------------------------------------------------------------

def _read_json_rows(path: Path, split: str) -> list[dict[str, Any]]:
    text = path.read_text()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]  # JSON Lines
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get(split), list):
        return obj[split]
    if isinstance(obj, dict):
        return [obj]  # a one-line .jsonl file parses as a single object
    raise ValueError(f"{path}: expected a list of records or {{{split!r}: [...]}}")


def read_rows(src: DataSource, keep: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """Rows of a local file/dir (absolute path: the launcher resolves plan-relative paths) or of a
    full hub name, the ones `keep` accepts, first `limit` kept.

    `load_dataset(name)` prefers a local folder called `name` over the hub (the seed notes lost a run
    to `load_dataset("sst2")` finding the repo's `sst2/` scripts folder), so a hub name must be
    `owner/name` and must not also exist as a folder relative to the working directory.
    """
    source = src.source
    path = Path(source)
    if path.is_absolute():
        rows = _read_local(path, src)
    else:
        if source.count("/") != 1:
            raise ValueError(f"data source {source!r} is neither an absolute path nor a full hub name like 'stanfordnlp/sst2'")
        if path.exists():
            raise ValueError(f"hub name {source!r} is shadowed by the local path {path.resolve()}: "
                             "datasets would read the local one; give the local data as an absolute path")
        from datasets import load_dataset

        rows = list(load_dataset(source, name=src.subset, split=src.split))
    if keep is not None:
        rows = [r for r in rows if keep(r)]
    return rows[: src.limit] if src.limit is not None else rows


# BeaverTails rows carry `is_safe`. Lisa's SupervisedDataset reads "BeaverTails_safe" (alignment and
# guide data: the first N safe rows of 30k_train) and "BeaverTails_dangerous" (the first N unsafe
# ones for the poison mix); evaluation takes the first 1000 prompts of 30k_test unfiltered.
SAFE_ROLES = frozenset({"train", "guide"})
UNSAFE_ROLES = frozenset({"harmful"})


def safety_filter(role: str) -> Callable[[dict[str, Any]], bool] | None:
    """The row filter for a data role; rows without `is_safe` always pass (plain instruction data)."""
    if role in SAFE_ROLES:
        return lambda r: r.get("is_safe") is not False
    if role in UNSAFE_ROLES:
        return lambda r: r.get("is_safe") is not True
    return None


def role_rows(data: dict[str, DataSource], role: str) -> list[dict[str, Any]]:
    return read_rows(data[role], keep=safety_filter(role))


def _read_local(path: Path, src: DataSource) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"data source not found: {path}")
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        return _read_json_rows(path, src.split)
    if path.is_file() and path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        return list(ds[src.split] if isinstance(ds, DatasetDict) else ds)
    if path.is_dir():  # a folder of data files: datasets infers the format and splits
        from datasets import load_dataset

        return list(load_dataset(str(path), name=src.subset, split=src.split))
    raise ValueError(f"unsupported data file {path} (use .json, .jsonl, .parquet or a dataset dir)")


def to_records(rows: Sequence[dict[str, Any]], role: str) -> list[Record]:
    """instruction/input/output rows; prompt/response rows (BeaverTails-style) are accepted too."""
    out = []
    for i, row in enumerate(rows):
        if "instruction" in row and "output" in row:
            instruction, output, inp = row["instruction"], row["output"], row.get("input") or ""
        elif "prompt" in row and "response" in row:
            instruction, output, inp = row["prompt"], row["response"], ""
        elif "sentence" in row and "label" in row:  # SST-2 as instruction data (Lisa's sst2/build_dataset.py)
            instruction, output, inp = SST2_INSTRUCTION, sst2_label_word(row["label"]), row["sentence"]
        else:
            raise KeyError(f"{role} row {i}: need instruction/output (or prompt/response), got {sorted(row)}")
        out.append(Record(instruction=str(instruction), output=str(output), input=str(inp), sample_id=f"{role}:{i}"))
    return out


def poison_mix(train: Sequence[Record], harmful: Sequence[Record], poison_ratio: float, sample_num: int) -> list[Record]:
    """The harmful fine-tuning attack set: first int(poison_ratio * sample_num) harmful rows, then the
    first sample_num minus that benign rows (Lisa's SupervisedDataset order: harmful first)."""
    n_harmful = int(poison_ratio * sample_num)
    n_benign = sample_num - n_harmful
    if n_harmful > len(harmful):
        raise ValueError(f"poison mix needs {n_harmful} harmful rows, data 'harmful' has {len(harmful)}")
    if n_benign > len(train):
        raise ValueError(f"poison mix needs {n_benign} benign rows, data 'train' has {len(train)}")
    return list(harmful[:n_harmful]) + list(train[:n_benign])


def sft_records(data: dict[str, DataSource], poison_ratio: float, sample_num: int | None) -> list[Record]:
    train = to_records(role_rows(data, "train"), "train")
    if sample_num is None:
        if poison_ratio > 0:
            raise ValueError("poison_ratio needs sample_num (the size of the mixed fine-tuning set)")
        return train
    n_harmful = int(poison_ratio * sample_num)
    if n_harmful and "harmful" not in data:
        raise ValueError(f"poison_ratio {poison_ratio} x sample_num {sample_num} needs data 'harmful'")
    harmful = to_records(role_rows(data, "harmful"), "harmful") if n_harmful else []
    return poison_mix(train, harmful, poison_ratio, sample_num)


# ---- templates and tokenisation ------------------------------------------------------------------

def resolve_template(name: str, tokenizer: PreTrainedTokenizerBase) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; known: {TEMPLATES}")
    if name == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
    if name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("template chat: this tokenizer has no chat template")
    return name  # type: ignore[return-value]


def build_prompt(rec: Record, template: Template, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    if template == "alpaca":
        fmt = ALPACA_WITH_INPUT if rec.input else ALPACA_NO_INPUT
        return fmt.format(instruction=rec.instruction, input=rec.input)
    if template == "user_assistant":
        return USER_ASSISTANT.format(text=rec.user_text)
    if template == "chat":
        assert tokenizer is not None
        return tokenizer.apply_chat_template([{"role": "user", "content": rec.user_text}],
                                             tokenize=False, add_generation_prompt=True)
    raise ValueError(f"template {template!r} must be resolved first")


def encode(prompt: str, response: str, tokenizer: PreTrainedTokenizerBase, max_length: int,
           add_special_tokens: bool, sample_id: str = "") -> Encoded:
    """Tokenise prompt+response jointly (the tokens Lisa/Alpaca train on) and mask the prompt by
    position: a token belongs to the prompt when it starts inside the prompt's characters.

    EOS is appended as an id, so it is a label even when pad == eos.
    """
    enc = tokenizer(prompt + response, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    boundary = len(ids)
    for i, (start, end) in enumerate(offsets):
        if end > start and start >= len(prompt):
            boundary = i
            break
    eos = tokenizer.eos_token_id
    if not (ids and ids[-1] == eos and tuple(offsets[-1]) == (0, 0)):  # some tokenizers append EOS themselves
        ids.append(eos)
    n_prompt, n_resp = boundary, len(ids) - boundary
    if n_prompt + n_resp > max_length:
        # Keep the response (at least half the budget, or all of it if shorter) and the prompt's
        # end, which holds the template's "Response:" cue; the prompt's head is dropped first.
        keep_resp = max(max_length - n_prompt, min(n_resp, max_length // 2))
        keep_prompt = max_length - keep_resp
        ids = ids[n_prompt - keep_prompt: n_prompt] + ids[n_prompt: n_prompt + keep_resp]
        n_prompt = keep_prompt
    labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    return Encoded(input_ids=ids, labels=labels, sample_id=sample_id)


def encode_record(rec: Record, template: Template, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Encoded:
    # Chat templates write their own BOS/role markers; the plain templates get the tokenizer's BOS.
    return encode(build_prompt(rec, template, tokenizer), rec.output, tokenizer, max_length,
                  add_special_tokens=(template != "chat"), sample_id=rec.sample_id)


class SFTDataset(Dataset):
    """Encoded examples; items carry `sample_index` so the trainer can record what each rank saw."""

    def __init__(self, examples: Sequence[Encoded]):
        self.examples = list(examples)
        self.sample_ids = [e.sample_id for e in self.examples]

    @classmethod
    def from_records(cls, records: Sequence[Record], template: Template, tokenizer: PreTrainedTokenizerBase,
                     max_length: int) -> "SFTDataset":
        return cls([encode_record(r, template, tokenizer, max_length) for r in records])

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.examples[i]
        return {"input_ids": e.input_ids, "labels": e.labels, "sample_index": i}


@dataclass
class SFTCollator:
    """Right-pads to the longest sequence in the batch. Attention mask and label padding come from
    the lengths, never from comparing ids with pad_token_id (pad may equal eos)."""

    pad_token_id: int

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(it["input_ids"]) for it in items)
        n = len(items)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for row, it in enumerate(items):
            k = len(it["input_ids"])
            input_ids[row, :k] = torch.tensor(it["input_ids"], dtype=torch.long)
            labels[row, :k] = torch.tensor(it["labels"], dtype=torch.long)
            attention[row, :k] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if "sample_index" in items[0]:
            batch["sample_index"] = torch.tensor([it["sample_index"] for it in items], dtype=torch.long)
        return batch
