"""FABE's ranked-candidate data: loading, stable sort by score, tokenisation, and the two batch layouts.

A row is `{"instruction", "input", "output": [c1..cn], "score": [s1..sn]}`. Candidates are sorted by
score, descending and stable, before anything else (METHODS.md).

The prompt and each candidate are tokenised separately (prompt ids + candidate ids + EOS), not jointly
as SFT does: every candidate must start from the very same prompt ids for the prompt to be computed
once, and it is also what the cleaner sees at inference (the prompt tokenised alone, then generation).

Layouts (both give all B x n candidates to the model in one forward pass):
- shared prompt ("packed"): one row per sample, `prompt, cand_1, ..., cand_n`; candidate j attends to
  the prompt and causally to itself only, and its positions continue from the prompt's end, so each
  candidate sees exactly what it would see alone. The prompt is computed once instead of n times.
- naive: B*n rows `prompt + cand_j`, right-padded.
Both describe the tokens to score the same way: for sample b, candidate j, token t: the model row,
the position whose logits predict it, and the label (-100 where there is none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from methods.data import IGNORE_INDEX, Record, Template, build_prompt

PROMPT_SEGMENT = 0
PAD_SEGMENT = -1


@dataclass(frozen=True)
class RankedRecord:
    instruction: str
    input: str
    candidates: tuple[str, ...]  # best first
    scores: tuple[float, ...]    # descending
    sample_id: str = ""

    def prompt_record(self) -> Record:
        return Record(instruction=self.instruction, output="", input=self.input, sample_id=self.sample_id)


def to_ranked_records(rows: Sequence[dict[str, Any]], role: str, num_candidates: int | None = None) -> list[RankedRecord]:
    """Validate rows, sort each row's candidates by score (descending, stable), keep the best
    `num_candidates` (all when None, which then must be the same number in every row)."""
    out: list[RankedRecord] = []
    for i, row in enumerate(rows):
        where = f"{role} row {i}"
        missing = [k for k in ("instruction", "output", "score") if k not in row]
        if missing:
            raise KeyError(f"{where}: missing {missing}; need instruction, input, output (list), score (list)")
        outs, scores = row["output"], row["score"]
        if not isinstance(outs, list) or not isinstance(scores, list) or len(outs) != len(scores):
            raise ValueError(f"{where}: output and score must be lists of the same length")
        if len(outs) < 2:
            raise ValueError(f"{where}: ranking needs at least 2 candidates, got {len(outs)}")
        order = sorted(range(len(outs)), key=lambda j: -float(scores[j]))  # sorted() is stable
        if num_candidates is not None:
            if len(order) < num_candidates:
                raise ValueError(f"{where}: {len(order)} candidates, num_candidates is {num_candidates}")
            order = order[:num_candidates]
        out.append(RankedRecord(instruction=str(row["instruction"]), input=str(row.get("input") or ""),
                                candidates=tuple(str(outs[j]) for j in order),
                                scores=tuple(float(scores[j]) for j in order), sample_id=f"{role}:{i}"))
    if num_candidates is None and len({len(r.candidates) for r in out}) > 1:
        raise ValueError(f"{role}: rows have different numbers of candidates; set num_candidates")
    return out


@dataclass(frozen=True)
class RankedExample:
    prompt_ids: list[int]
    cand_ids: list[list[int]]  # each ends with EOS unless truncated
    scores: list[float]
    sample_id: str


def prompt_ids(prompt: str, tokenizer: PreTrainedTokenizerBase, add_special_tokens: bool) -> list[int]:
    """The prompt's ids with the tokenizer's BOS (when asked) but never a trailing EOS, which some
    tokenizers' post-processors append."""
    ids = list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
    eos = tokenizer.eos_token_id
    if add_special_tokens and ids and ids[-1] == eos:
        plain = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not plain or plain[-1] != eos:
            ids = ids[:-1]
    return ids


def encode_ranked(rec: RankedRecord, template: Template, tokenizer: PreTrainedTokenizerBase,
                  max_length: int) -> RankedExample:
    """max_length bounds each `prompt + candidate` sequence, with SFT's rule: keep the response (at
    least half the budget, or all of it if shorter) and the prompt's end; drop the prompt's head."""
    p_ids = prompt_ids(build_prompt(rec.prompt_record(), template, tokenizer), tokenizer,
                       add_special_tokens=(template != "chat"))
    eos = tokenizer.eos_token_id
    c_ids = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) + [eos] for c in rec.candidates]
    longest = max(len(c) for c in c_ids)
    if len(p_ids) + longest > max_length:
        keep_resp = max(max_length - len(p_ids), min(longest, max_length // 2))
        keep_prompt = max_length - keep_resp
        p_ids = p_ids[len(p_ids) - keep_prompt:]
        c_ids = [c[:keep_resp] for c in c_ids]
    return RankedExample(prompt_ids=p_ids, cand_ids=c_ids, scores=list(rec.scores), sample_id=rec.sample_id)


class RankedDataset(Dataset):
    def __init__(self, examples: Sequence[RankedExample]):
        self.examples = list(examples)
        self.sample_ids = [e.sample_id for e in self.examples]

    @classmethod
    def from_records(cls, records: Sequence[RankedRecord], template: Template, tokenizer: PreTrainedTokenizerBase,
                     max_length: int) -> "RankedDataset":
        return cls([encode_ranked(r, template, tokenizer, max_length) for r in records])

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.examples[i]
        return {"prompt_ids": e.prompt_ids, "cand_ids": e.cand_ids, "scores": e.scores, "sample_index": i}


@dataclass
class RankedCollator:
    """Builds either layout (module docstring). Output keys:
    input_ids (R, L); position_ids + segments (packed) or attention_mask (naive); rows, pred_pos,
    labels (B, n, T); rewards (B, n); sample_index (B,)."""

    pad_token_id: int
    shared_prompt: bool = True

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = len(items[0]["cand_ids"])
        if any(len(it["cand_ids"]) != n for it in items):
            raise ValueError("every sample of a batch needs the same number of candidates")
        b = len(items)
        t_max = max(len(c) for it in items for c in it["cand_ids"])
        rows = torch.zeros((b, n, t_max), dtype=torch.long)
        pred_pos = torch.zeros((b, n, t_max), dtype=torch.long)
        labels = torch.full((b, n, t_max), IGNORE_INDEX, dtype=torch.long)
        batch = self._packed(items, n, rows, pred_pos, labels) if self.shared_prompt else \
            self._naive(items, n, rows, pred_pos, labels)
        batch.update(rows=rows, pred_pos=pred_pos, labels=labels,
                     rewards=torch.tensor([it["scores"] for it in items], dtype=torch.float32))
        if "sample_index" in items[0]:
            batch["sample_index"] = torch.tensor([it["sample_index"] for it in items], dtype=torch.long)
        return batch

    def _packed(self, items, n, rows, pred_pos, labels) -> dict[str, torch.Tensor]:
        width = max(len(it["prompt_ids"]) + sum(len(c) for c in it["cand_ids"]) for it in items)
        b = len(items)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((b, width), dtype=torch.long)
        segments = torch.full((b, width), PAD_SEGMENT, dtype=torch.long)
        for i, it in enumerate(items):
            p = len(it["prompt_ids"])
            input_ids[i, :p] = torch.tensor(it["prompt_ids"])
            position_ids[i, :p] = torch.arange(p)
            segments[i, :p] = PROMPT_SEGMENT
            start = p
            for j, cand in enumerate(it["cand_ids"]):
                c = len(cand)
                input_ids[i, start:start + c] = torch.tensor(cand)
                position_ids[i, start:start + c] = torch.arange(p, p + c)  # as if right after the prompt
                segments[i, start:start + c] = j + 1
                rows[i, j, :c] = i
                # The first token is predicted by the prompt's last position, the others by their predecessor.
                pred_pos[i, j, 0] = p - 1
                pred_pos[i, j, 1:c] = torch.arange(start, start + c - 1)
                labels[i, j, :c] = torch.tensor(cand)
                start += c
        return {"input_ids": input_ids, "position_ids": position_ids, "segments": segments}

    def _naive(self, items, n, rows, pred_pos, labels) -> dict[str, torch.Tensor]:
        width = max(len(it["prompt_ids"]) + len(c) for it in items for c in it["cand_ids"])
        b = len(items)
        input_ids = torch.full((b * n, width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((b * n, width), dtype=torch.long)
        for i, it in enumerate(items):
            p = len(it["prompt_ids"])
            for j, cand in enumerate(it["cand_ids"]):
                r, c = i * n + j, len(cand)
                input_ids[r, :p] = torch.tensor(it["prompt_ids"])
                input_ids[r, p:p + c] = torch.tensor(cand)
                attention[r, :p + c] = 1
                rows[i, j, :c] = r
                pred_pos[i, j, :c] = torch.arange(p - 1, p + c - 1)
                labels[i, j, :c] = torch.tensor(cand)
        return {"input_ids": input_ids, "attention_mask": attention}


def packed_attention_mask(segments: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, L) mask for the packed layout: prompt tokens attend causally to the prompt; candidate
    j attends to the prompt and causally within candidate j. Padding rows attend to themselves only:
    a fully masked row would give NaN in SDPA, and NaN would leak into the gradients.

    `sdpa` takes a boolean mask (True = attend), `eager` an additive float mask.
    """
    width = segments.shape[1]
    q = segments[:, :, None]
    k = segments[:, None, :]
    idx = torch.arange(width, device=segments.device)
    causal = (idx[:, None] >= idx[None, :])[None]
    visible = ((k == PROMPT_SEGMENT) & (q >= PROMPT_SEGMENT)) | ((k == q) & (q > PROMPT_SEGMENT))
    allowed = (causal & visible) | ((q == PAD_SEGMENT) & torch.eye(width, dtype=torch.bool, device=segments.device)[None])
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(~allowed, torch.finfo(dtype).min)
    raise ValueError(f"the shared-prompt layout needs sdpa or eager attention, not {attn_implementation!r}")


SHARED_PROMPT_ATTENTION = ("sdpa", "eager")
