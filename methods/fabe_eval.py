"""FABE cleaner evaluation (method `eval_fabe`).

Proxy metrics (always): the cleaner rewrites every test input; on poisoned inputs we measure how
often the trigger survives the rewrite, on clean inputs how well the rewrite keeps the content (exact
match, sacreBLEU BLEU-4 against the clean reference; `bleu_tokenisation: seed` for the pre-sacreBLEU
tokens). These are proxies: the paper reports none of them.

The official protocol (with `params.victim`; lyr17/Frontdoor-Adjustment-Backdoor-Elimination @ed61996,
OpenBackdoor/openbackdoor/defenders/fabe_beam_defender.py lines 84-124): each input is rewritten with
diverse beam search (4 beams in 4 groups, diversity penalty 0.1, the 4 rewrites returned with their
sequence scores; methods/diverse_beam.py), the victim classifier scores every rewrite, and the
prediction is argmax over classes of sum_j softmax(sequence scores)_j * logits_j. ASR = poisoned inputs
whose true label is not the target, predicted as the target; clean accuracy = clean inputs predicted
as their label. OpenBackdoor's attacker.eval then also scores each rewrite alone (the defender's
corrected data holds all 4 per input): `*_per_rewrite`. The proxies are then computed on the
best-scored rewrite.

Test rows: `{"instruction", "input", "output", "trigger", "label"}`. `output` is the clean reference,
or a FABE candidate list (with `score`), in which case the best-scored candidate is the reference.
`trigger` (a string or a list; null/absent for clean inputs) marks a poisoned row; rows without the
field are poisoned when their input contains one of `params.triggers`. `label` (the true class, an
int) is needed with a victim.

Ranks split the rows (row i on rank i % world) and rank 0 gathers them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from launcher.contract import write_text, JobFile, Result
from methods.bleu import Tokenisation, corpus_bleu
from methods.core.dist import device_for, dist_info, gather_objects, init_group
from methods.core.precision import DTYPES, resolve_precision
from methods.core.rank import RankJob
from methods.data import Record, build_prompt, read_rows, resolve_template
from methods.diverse_beam import group_beam_search
from methods.fabe_data import prompt_ids
from methods.fabe_vote_params import FABEVictimParams
from methods.generate import load_eval_model
from methods.greedy import greedy_generate, left_pad, stop_ids
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
    label: int | None = None   # the true class (needed with a victim)

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
        label = row.get("label")
        cases.append(CleanerCase(i, str(row["instruction"]), text, str(ref), found,
                                 None if label is None else int(label)))
    return cases


def contains(text: str, trigger: str, case_sensitive: bool) -> bool:
    return trigger in text if case_sensitive else trigger.lower() in text.lower()


@dataclass(frozen=True)
class VictimVote:
    """The victim's verdict on one input's rewrites (official protocol)."""

    label: int
    rewrites: list[str]             # best-scored first
    sequence_scores: list[float]
    weights: list[float]            # softmax(sequence_scores)
    prediction: int                 # argmax of the weighted logits
    rewrite_predictions: list[int]  # the victim's argmax on each rewrite alone


@dataclass(frozen=True)
class Prediction:
    index: int
    poisoned: bool
    triggers: list[str]
    rewrite: str
    reference: str
    trigger_survived: bool | None  # None for clean inputs
    exact_match: bool
    vote: VictimVote | None = None


def judge(case: CleanerCase, rewrite: str, case_sensitive: bool, vote: VictimVote | None = None) -> Prediction:
    survived = any(contains(rewrite, t, case_sensitive) for t in case.triggers) if case.poisoned else None
    return Prediction(case.index, case.poisoned, list(case.triggers), rewrite, case.reference, survived,
                      rewrite.strip() == case.reference.strip(), vote)


def weighted_vote(logits: torch.Tensor, sequence_scores: torch.Tensor) -> tuple[int, list[float]]:
    """fabe_beam_defender.py 116-121: the victim's raw logits (n rewrites x classes), each row weighted by
    softmax over the n sequence scores, summed; the class with the largest sum. Returns it and the weights."""
    weights = torch.softmax(sequence_scores.double(), dim=0)
    return int(torch.argmax((weights[:, None] * logits.double()).sum(0))), weights.tolist()


def victim_metrics(preds: Sequence[Prediction], target_label: int) -> dict[str, float]:
    """Percentages. ASR over poisoned rows whose true label is not the target (OpenBackdoor's test-poison
    holds only those); clean accuracy over clean rows. `*_per_rewrite`: every rewrite a row of its own."""
    attacked = [p.vote for p in preds if p.poisoned and p.vote is not None and p.vote.label != target_label]
    clean = [p.vote for p in preds if not p.poisoned and p.vote is not None]
    m: dict[str, float] = {"n_asr": float(len(attacked))}
    if attacked:
        m["asr"] = 100.0 * sum(v.prediction == target_label for v in attacked) / len(attacked)
        each = [r for v in attacked for r in v.rewrite_predictions]
        m["asr_per_rewrite"] = 100.0 * sum(r == target_label for r in each) / len(each)
    if clean:
        m["clean_accuracy"] = 100.0 * sum(v.prediction == v.label for v in clean) / len(clean)
        pairs = [(r, v.label) for v in clean for r in v.rewrite_predictions]
        m["clean_accuracy_per_rewrite"] = 100.0 * sum(r == y for r, y in pairs) / len(pairs)
    return m


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


# ---- the official protocol: diverse beam rewrites, the victim's weighted vote ----------------------

def load_victim(path: str, device: torch.device):
    """The victim in fp32, as OpenBackdoor's PLMVictim runs it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not Path(path).is_dir():
        raise FileNotFoundError(f"params.victim.model: {path} is not a directory; give the victim classifier's "
                                "Hugging Face model dir (config.json, weights, tokenizer)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, tokenizer


@torch.no_grad()
def victim_logits(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int,
                  device: torch.device) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        out.append(model(**enc).logits.float().cpu())
    return torch.cat(out)


def cut_rewrite(text: str, mode: str) -> str:
    """The official keeps the text up to the first newline after "### Response:"; our prompts end with
    the cue's own newline, so leading whitespace goes first."""
    text = text.strip()
    return text.split("\n", 1)[0].strip() if mode == "first_line" else text


@torch.no_grad()
def beam_rewrites(model, tokenizer, prompts: Sequence[Sequence[int]], v: FABEVictimParams, max_new_tokens: int,
                  batch_size: int, device: torch.device,
                  on_batch: Callable[[], None] | None = None) -> list[tuple[list[str], list[float]]]:
    """Per prompt: its rewrites (best-scored first) and their sequence scores. The official sets
    max_new_tokens to the prompt's length - 100 (its instruction's length, so about the input's); here
    it is params.max_new_tokens."""
    stops = stop_ids(model, tokenizer.eos_token_id)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = left_pad(chunk, tokenizer.pad_token_id)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=v.num_beams, num_beam_groups=v.num_beam_groups,
                             diversity_penalty=v.diversity_penalty, num_return_sequences=v.num_return_sequences,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=stops or None, temperature=None, top_p=None, top_k=None,
                             custom_generate=group_beam_search)
        rows = gen.sequences[:, ids.shape[1]:].tolist()
        scores = gen.sequences_scores.float().cpu().view(len(chunk), v.num_return_sequences)
        for i in range(len(chunk)):
            texts = []
            for row in rows[i * v.num_return_sequences:(i + 1) * v.num_return_sequences]:
                cut = next((j for j, t in enumerate(row) if t in stops), len(row))
                texts.append(cut_rewrite(tokenizer.decode(row[:cut], skip_special_tokens=True), v.rewrite_cut))
            out.append((texts, scores[i].tolist()))
        if on_batch is not None:
            on_batch()
    return out


def vote_predictions(cases: Sequence[CleanerCase], rewrites: Sequence[tuple[list[str], list[float]]], victim,
                     victim_tokenizer, v: FABEVictimParams, case_sensitive: bool, device: torch.device) -> list[Prediction]:
    flat = [t for texts, _ in rewrites for t in texts]
    logits = victim_logits(victim, victim_tokenizer, flat, v.max_length, v.batch_size, device)
    logits = logits.view(len(cases), v.num_return_sequences, -1)
    preds = []
    for c, (texts, scores), lg in zip(cases, rewrites, logits):
        pred, weights = weighted_vote(lg, torch.tensor(scores))
        vote = VictimVote(int(c.label), texts, scores, weights, pred, lg.argmax(-1).tolist())  # run() checked labels
        preds.append(judge(c, texts[0], case_sensitive, vote))
    return preds


def run(job: JobFile) -> int:
    rank = RankJob.start(job, needs_model=" (the cleaner: base model + its adapter)")
    ranks, heartbeat = rank.ranks, rank.heartbeat
    params = FABEEvalParams.model_validate(job.params)
    init_group(ranks)
    precision = resolve_precision(job.training.precision)
    device = device_for(ranks)
    # The cleaner = base + its adapter chain (e.g. ${fabe.adapter}, after any start adapter), merged.
    model, tokenizer, chain = load_eval_model(job.model, DTYPES[precision], device)
    template = resolve_template(params.template, tokenizer)

    cases = to_cases(read_rows(job.data["test"]), params.triggers, params.case_sensitive)
    mine = [c for c in cases if c.index % ranks.world_size == ranks.rank]
    prompts = [prompt_ids(build_prompt(Record(c.instruction, "", c.input), template, tokenizer), tokenizer,
                          add_special_tokens=(template != "chat"))[-params.max_prompt_length:] for c in mine]
    v = params.victim
    if v is not None and (missing := [c.index for c in cases if c.label is None]):
        # Before any generation: a missing label found after an hour of beam search is an hour lost.
        raise KeyError(f"test rows {missing[:5]}{'...' if len(missing) > 5 else ''} have no 'label'; with "
                       "params.victim every row needs its true class (an int)")
    heartbeat.beat("evaluating", 0, len(cases))
    log.info("template %s: %d test rows (%d poisoned), %d on this rank; %s", template, len(cases),
             sum(c.poisoned for c in cases), len(mine),
             f"victim {v.model}, {v.num_beams} beams in {v.num_beam_groups} groups" if v else "greedy, proxy metrics")
    if v is None:
        gens = greedy_generate(model, prompts, tokenizer.pad_token_id, tokenizer.eos_token_id, params.max_new_tokens,
                               params.batch_size, device, on_batch=heartbeat.advance)
        local = [judge(c, tokenizer.decode(g.new_ids, skip_special_tokens=True), params.case_sensitive)
                 for c, g in zip(mine, gens)]
    else:
        victim, victim_tok = load_victim(v.model, device)
        rewrites = beam_rewrites(model, tokenizer, prompts, v, params.max_new_tokens, params.batch_size, device,
                                 on_batch=heartbeat.advance)
        local = vote_predictions(mine, rewrites, victim, victim_tok, v, params.case_sensitive, device)
    preds = sorted(gather_objects(local), key=lambda p: p.index)
    result = None
    if ranks.rank == 0:
        metrics = cleaner_metrics(preds, params.bleu_tokenisation)
        if v is not None:
            metrics.update(victim_metrics(preds, v.target_label))
            metrics["judge"] = f"victim {Path(v.model).name}"
        write_text(rank.jd.root / PREDICTIONS, "".join(json.dumps(asdict(p)) + "\n" for p in preds))
        result = Result(status="succeeded", metrics=metrics, dist=dist_info())
        log.info("adapters merged: %s", chain or "none")
        log.info("cleaner metrics: %s", json.dumps(metrics))
    return rank.finish(result, len(cases), len(cases))
