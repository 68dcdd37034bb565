"""FABE cleaner evaluation (method `eval_fabe`): the cleaner rewrites every test input (greedy, batched);
on poisoned inputs we measure how often the trigger survives the rewrite (the attack-success-after-
cleaning proxy), on clean inputs how well the rewrite keeps the content (exact match, sacreBLEU BLEU-4
against the clean reference; `bleu_tokenisation: seed` for the pre-sacreBLEU tokens).

Test rows: `{"instruction", "input", "output", "trigger"}`. `output` is the clean reference, or a
FABE candidate list (with `score`), in which case the best-scored candidate is the reference.
`trigger` (a string or a list; null/absent for clean inputs) marks a poisoned row; rows without the
field are poisoned when their input contains one of `params.triggers`.

Ranks split the rows (row i on rank i % world) and rank 0 gathers them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from launcher.atomic import write_text
from launcher.spec import JobFile
from methods.bleu import Tokenisation, corpus_bleu
from methods.common import DTYPES, Result, dist_info, resolve_precision, start_rank, write_result
from methods.data import Record, build_prompt, read_rows, resolve_template
from methods.dist_utils import gather_objects, init_if_needed, shutdown
from methods.fabe_data import prompt_ids
from methods.generate import load_eval_model
from methods.greedy import greedy_generate
from methods.params import FABEEvalParams

log = logging.getLogger(__name__)
PREDICTIONS = "fabe_predictions.jsonl"


@dataclass(frozen=True)
class CleanerCase:
    index: int
    instruction: str
    input: str
    reference: str
    triggers: tuple[str, ...]  # empty: a clean input

    @property
    def poisoned(self) -> bool:
        return bool(self.triggers)


def to_cases(rows: Sequence[dict[str, Any]], triggers: Sequence[str], case_sensitive: bool) -> list[CleanerCase]:
    cases = []
    for i, row in enumerate(rows):
        if "instruction" not in row or "output" not in row:
            raise KeyError(f"test row {i}: need instruction, input, output (and trigger for poisoned rows)")
        ref = row["output"]
        if isinstance(ref, list):  # FABE's ranked format: the best-scored candidate is the clean rewrite
            scores = row.get("score") or [0.0] * len(ref)
            ref = ref[max(range(len(ref)), key=lambda j: (float(scores[j]), -j))]
        text = str(row.get("input") or "")
        if "trigger" in row:
            t = row["trigger"]
            found = tuple(t) if isinstance(t, list) else ((str(t),) if t else ())
        else:
            found = tuple(t for t in triggers if contains(text, t, case_sensitive))
        cases.append(CleanerCase(i, str(row["instruction"]), text, str(ref), found))
    return cases


def contains(text: str, trigger: str, case_sensitive: bool) -> bool:
    return trigger in text if case_sensitive else trigger.lower() in text.lower()


@dataclass(frozen=True)
class Prediction:
    index: int
    poisoned: bool
    triggers: list[str]
    rewrite: str
    reference: str
    trigger_survived: bool | None  # None for clean inputs
    exact_match: bool


def judge(case: CleanerCase, rewrite: str, case_sensitive: bool) -> Prediction:
    survived = any(contains(rewrite, t, case_sensitive) for t in case.triggers) if case.poisoned else None
    return Prediction(case.index, case.poisoned, list(case.triggers), rewrite, case.reference, survived,
                      rewrite.strip() == case.reference.strip())


def cleaner_metrics(preds: Sequence[Prediction], bleu_tokenisation: Tokenisation = "13a") -> dict[str, Any]:
    """Percentages. BLEU is sacreBLEU corpus BLEU-4 over the clean rows (and, separately, over the poisoned
    rows against their clean references: content kept while the trigger goes); with the seed tokenisation
    the keys end in `_seedtok`, so the two kinds of number are never mixed up, and `bleu_signature` says
    how they were computed."""
    poisoned = [p for p in preds if p.poisoned]
    clean = [p for p in preds if not p.poisoned]
    m: dict[str, Any] = {"n_poisoned": float(len(poisoned)), "n_clean": float(len(clean))}
    suffix = "_seedtok" if bleu_tokenisation == "seed" else ""
    if poisoned:
        m["trigger_survival_rate"] = 100.0 * sum(bool(p.trigger_survived) for p in poisoned) / len(poisoned)
        b = corpus_bleu([p.rewrite for p in poisoned], [p.reference for p in poisoned], bleu_tokenisation)
        m["poisoned_bleu" + suffix], m["bleu_signature"] = b.bleu, f"sacrebleu {b.signature}"
    if clean:
        m["clean_exact_match"] = 100.0 * sum(p.exact_match for p in clean) / len(clean)
        b = corpus_bleu([p.rewrite for p in clean], [p.reference for p in clean], bleu_tokenisation)
        m["clean_bleu" + suffix], m["bleu_signature"] = b.bleu, f"sacrebleu {b.signature}"
    return m


def run(job: JobFile) -> int:
    ranks, jd, heartbeat = start_rank(job, needs_model=" (the cleaner: base model + its adapter)")
    params = FABEEvalParams.model_validate(job.params)
    init_if_needed(ranks)
    precision = resolve_precision(job.training.precision)
    device = torch.device(f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu")
    # The cleaner = base + its adapter chain (e.g. ${fabe.adapter}, after any start adapter), merged.
    model, tokenizer, chain = load_eval_model(job.model, DTYPES[precision], device)
    template = resolve_template(params.template, tokenizer)

    cases = to_cases(read_rows(job.data["test"]), params.triggers, params.case_sensitive)
    mine = [c for c in cases if c.index % ranks.world_size == ranks.rank]
    prompts = [prompt_ids(build_prompt(Record(c.instruction, "", c.input), template, tokenizer), tokenizer,
                          add_special_tokens=(template != "chat"))[-params.max_prompt_length:] for c in mine]
    heartbeat.beat("evaluating", 0, len(cases))
    log.info("template %s: %d test rows (%d poisoned), %d on this rank", template, len(cases),
             sum(c.poisoned for c in cases), len(mine))
    gens = greedy_generate(model, prompts, tokenizer.pad_token_id, tokenizer.eos_token_id, params.max_new_tokens,
                           params.batch_size, device, on_batch=heartbeat.advance)
    local = [judge(c, tokenizer.decode(g.new_ids, skip_special_tokens=True), params.case_sensitive)
             for c, g in zip(mine, gens)]
    preds = sorted(gather_objects(local), key=lambda p: p.index)
    dist = dist_info()
    if ranks.rank == 0:
        metrics = cleaner_metrics(preds, params.bleu_tokenisation)
        write_text(jd.root / PREDICTIONS, "".join(json.dumps(asdict(p)) + "\n" for p in preds))
        write_result(job, Result(status="succeeded", metrics=metrics, dist=dist))
        log.info("adapters merged: %s", chain or "none")
        log.info("cleaner metrics: %s", json.dumps(metrics))
    heartbeat.beat("done", len(cases), len(cases))
    shutdown()
    return 0
