"""SteerMoE's paired data and its batch structure (seed notes 003: 8 safe + 8 unsafe in every batch,
the same batches for the analysis and for training).

A row pairs a safe and an unsafe sample: `{"safe_prompt", "safe_response", "unsafe_prompt",
"unsafe_response"}`, or, for the official notebook's pairs (the same prompt, two answers),
`{"prompt", "safe_response", "unsafe_response"}`. For training, `unsafe_response` is the behaviour to
learn (a refusal); the analysis routes on the model's own continuation or on these responses
(params.tokens). `tokens: target` compares two answers to one prompt, so every row must share it.

Batch b holds safe rows [b*ks, (b+1)*ks) followed by unsafe rows [b*ku, (b+1)*ku); the samples are
laid out flat in exactly that order, so batch b is a contiguous range of sample indices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from methods.data import Record

log = logging.getLogger(__name__)
Group = Literal["safe", "unsafe"]
GROUPS: tuple[Group, Group] = ("safe", "unsafe")
PAIR_KEYS = ("safe_prompt", "safe_response", "unsafe_prompt", "unsafe_response")


def pair_records(rows: Sequence[dict[str, Any]], same_prompt: bool = False) -> tuple[list[Record], list[Record]]:
    safe, unsafe = [], []
    for i, row in enumerate(rows):
        if "prompt" in row and "safe_prompt" not in row and "unsafe_prompt" not in row:
            row = {**row, "safe_prompt": row["prompt"], "unsafe_prompt": row["prompt"]}
        missing = [k for k in PAIR_KEYS if k not in row]
        if missing:
            raise KeyError(f"train row {i}: missing {missing}; SteerMoE rows need {', '.join(PAIR_KEYS)} "
                           "(or one shared 'prompt' with safe_response and unsafe_response)")
        if same_prompt and str(row["safe_prompt"]) != str(row["unsafe_prompt"]):
            raise ValueError(f"train row {i}: safe_prompt and unsafe_prompt differ, but tokens: target compares two "
                             "answers to the same prompt (the official notebook's pairs); give the row one 'prompt', "
                             "or use tokens: generated or response for pairs of different prompts")
        safe.append(Record(instruction=str(row["safe_prompt"]), output=str(row["safe_response"]), sample_id=f"safe:{i}"))
        unsafe.append(Record(instruction=str(row["unsafe_prompt"]), output=str(row["unsafe_response"]),
                             sample_id=f"unsafe:{i}"))
    return safe, unsafe


@dataclass(frozen=True)
class BatchedSamples:
    records: list[Record]        # flat, batch after batch
    groups: list[Group]          # per record
    batches: list[list[int]]     # indices into records; batch b = its safe samples, then its unsafe ones

    @property
    def sample_ids(self) -> list[str]:
        return [r.sample_id for r in self.records]

    def batch_ids(self) -> list[list[str]]:
        return [[self.records[i].sample_id for i in b] for b in self.batches]


def build_batches(safe: Sequence[Record], unsafe: Sequence[Record], safe_per_batch: int,
                  unsafe_per_batch: int) -> BatchedSamples:
    n = min(len(safe) // safe_per_batch, len(unsafe) // unsafe_per_batch)
    if n == 0:
        raise ValueError(f"need at least {safe_per_batch} safe and {unsafe_per_batch} unsafe samples for one batch, "
                         f"got {len(safe)} and {len(unsafe)}")
    left = (len(safe) - n * safe_per_batch, len(unsafe) - n * unsafe_per_batch)
    if any(left):
        log.warning("%d safe and %d unsafe samples do not fill a batch and are left out", *left)
    records: list[Record] = []
    groups: list[Group] = []
    batches: list[list[int]] = []
    for b in range(n):
        start = len(records)
        part = list(safe[b * safe_per_batch:(b + 1) * safe_per_batch]) + \
            list(unsafe[b * unsafe_per_batch:(b + 1) * unsafe_per_batch])
        records.extend(part)
        groups.extend(["safe"] * safe_per_batch + ["unsafe"] * unsafe_per_batch)
        batches.append(list(range(start, len(records))))
    return BatchedSamples(records=records, groups=groups, batches=batches)


def batches_from_rows(rows: Sequence[dict[str, Any]], safe_per_batch: int, unsafe_per_batch: int,
                      same_prompt: bool = False) -> BatchedSamples:
    safe, unsafe = pair_records(rows, same_prompt)
    return build_batches(safe, unsafe, safe_per_batch, unsafe_per_batch)
