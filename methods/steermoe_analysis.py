"""SteerMoE analysis (method `steermoe_analysis`, and the first phase of `steermoe`).

Run the MoE model on the analysis batches (k safe + k unsafe each), record the router's top-k choice
on the tokens that matter, and per layer l and expert e compute p_{l,e} = activations / tokens for
each group and the risk difference RD = p_safe - p_unsafe (METHODS.md "SteerMoE"; adobe-research/
SteerMoE's calc_risk_diff: a/(a+d) per subset, counts pooled over all tokens of a subset). Experts
are sorted by |RD|; the unsafe-linked ones (RD < 0 by default: more active on unsafe samples) are
selected and written to <job dir>/steermoe_experts.json.

Tokens that matter (params.tokens):
- `generated` (the seed's choice, its demo_refactored.py): the model's own greedy continuation of
  each prompt; the safe and unsafe groups hold different prompts;
- `response`: the data's response tokens, teacher-forced, with the EOS the data code appends;
- `target` (the official selection, adobe-research/SteerMoE @0c7e6b5 custom_steering.ipynb, "Save
  Routings" and "Detect Experts"): each pair is one prompt with two answers, each conversation is
  run teacher-forced, and the tokens counted are the target string's own tokens (tokenised alone,
  found in the conversation's tokens, the last occurrence): no EOS, no end-of-turn marker.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from launcher.contract import write_json, JobFile, Result
from methods.core import dist
from methods.core.precision import DTYPES, resolve_precision
from methods.core.rank import RankInfo, RankJob
from methods.data import (IGNORE_INDEX, Record, SFTCollator, Template, build_prompt, encode_record, read_rows,
                          resolve_template)
from methods.fabe_data import prompt_ids
from methods.greedy import greedy_generate, left_pad, positions_from_mask
from methods.models import load_base_model, load_tokenizer
from methods.params import SteerMoEAnalysisParams
from methods.steermoe_data import GROUPS, BatchedSamples, batches_from_rows

log = logging.getLogger(__name__)
EXPERTS_FILE = "steermoe_experts.json"


def moe_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(layers, experts per layer, experts per token) from the config (OLMoE, Mixtral, Qwen-MoE names)."""
    cfg = model.config
    experts = getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts", None)
    top_k = getattr(cfg, "num_experts_per_tok", None)
    if not experts or not top_k:
        raise ValueError(f"{type(model).__name__} is not a mixture-of-experts model (no num_experts / num_experts_per_tok)")
    return int(cfg.num_hidden_layers), int(experts), int(top_k)


@dataclass
class RoutingCounts:
    activations: torch.Tensor  # (2, L, E) int64: group (safe, unsafe) x layer x expert
    tokens: torch.Tensor       # (2,) int64: counted tokens per group
    top_k: int

    @classmethod
    def empty(cls, layers: int, experts: int, top_k: int) -> "RoutingCounts":
        return cls(torch.zeros((2, layers, experts), dtype=torch.long), torch.zeros(2, dtype=torch.long), top_k)

    def probabilities(self) -> torch.Tensor:
        """(2, L, E) float64: p = activations / tokens per group."""
        return self.activations.double() / self.tokens.clamp(min=1).double()[:, None, None]

    def risk_difference(self) -> torch.Tensor:
        p = self.probabilities()
        return p[0] - p[1]


def router_choices(router_logits: Sequence[torch.Tensor], top_k: int) -> torch.Tensor:
    """(L, N, k): the experts each token is sent to, chosen like OlmoeTopKRouter: top-k of the
    float32 softmax of the router logits."""
    return torch.stack([torch.topk(torch.softmax(lg.float(), dim=-1), top_k, dim=-1).indices for lg in router_logits])


@torch.no_grad()
def count_batch(model: torch.nn.Module, counts: RoutingCounts, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_mask: torch.Tensor, is_unsafe: torch.Tensor, position_ids: torch.Tensor | None = None) -> None:
    """Add one forward pass's routing on the masked tokens to `counts`. Masks are (B, T) / (B,)."""
    device = next(model.parameters()).device
    out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                position_ids=None if position_ids is None else position_ids.to(device),
                output_router_logits=True, use_cache=False)
    b, t = input_ids.shape
    choices = router_choices(out.router_logits, counts.top_k).view(len(out.router_logits), b, t, counts.top_k).cpu()
    experts = counts.activations.shape[-1]
    for g in range(2):
        sel = token_mask.bool() & (is_unsafe.bool() == bool(g))[:, None]
        picked = choices[:, sel]  # (L, N, k)
        counts.tokens[g] += int(sel.sum())
        for layer in range(picked.shape[0]):
            counts.activations[g, layer] += torch.bincount(picked[layer].flatten(), minlength=experts)


def batch_inputs_response(records, template: Template, tokenizer, max_length: int) -> dict[str, torch.Tensor]:
    """Teacher-forced prompt + response; the tokens that count are the response's (labels != -100)."""
    items = [{"input_ids": e.input_ids, "labels": e.labels}
             for e in (encode_record(r, template, tokenizer, max_length) for r in records)]
    batch = SFTCollator(tokenizer.pad_token_id)(items)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "token_mask": batch["labels"] != IGNORE_INDEX, "position_ids": None}


def target_span(ids: Sequence[int], target: Sequence[int]) -> tuple[int, int] | None:
    """[start, end) of the last occurrence of `target` in `ids` (the notebook's find_sub_list, last one)."""
    n = len(target)
    for start in range(len(ids) - n, -1, -1):
        if n and list(ids[start:start + n]) == list(target):
            return start, start + n
    return None


def conversation_ids(rec: Record, template: Template, tokenizer) -> list[int]:
    """Prompt and answer as one teacher-forced sequence: for chat models the full two-message
    conversation, as the notebook's llm.chat(messages) renders it; otherwise prompt + answer."""
    if template == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": rec.user_text},
                                              {"role": "assistant", "content": rec.output}], tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(build_prompt(rec, template, tokenizer) + rec.output, add_special_tokens=True)["input_ids"])


def batch_inputs_target(records: Sequence[Record], template: Template, tokenizer, max_length: int) -> dict[str, Any]:
    """Teacher-forced conversations, right-padded; the tokens that count are the answer's own. The
    sequence ends with the answer: what follows it cannot change a causal model's routing on it."""
    rows, spans = [], []
    for r in records:
        ids = conversation_ids(r, template, tokenizer)
        target = tokenizer(r.output, add_special_tokens=False)["input_ids"]
        span = target_span(ids, target)
        if span is None:  # the notebook asserts the same
            raise ValueError(f"{r.sample_id}: the answer's tokens, tokenised alone, do not occur in the conversation's "
                             "tokens (the tokenizer merges them with their context); use tokens: response for this data")
        if span[1] > max_length:
            raise ValueError(f"{r.sample_id}: the conversation up to the end of its answer is {span[1]} tokens, more "
                             f"than training.max_length {max_length}; raise training.max_length")
        rows.append(ids[:span[1]])
        spans.append(span)
    width = max(len(x) for x in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    token_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (ids, (start, end)) in enumerate(zip(rows, spans)):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(ids)] = 1
        token_mask[i, start:end] = True
    return {"input_ids": input_ids, "attention_mask": mask, "token_mask": token_mask, "position_ids": None}


def batch_inputs_generated(model, records, template: Template, tokenizer, max_new_tokens: int,
                           max_length: int) -> dict[str, torch.Tensor]:
    """The whole batch is generated together (greedy, left-padded), then routed once more on
    prompt + continuation; the tokens that count are the continuation's. Positions follow the
    attention mask, as in generate(), so the routing is the one the model used while generating."""
    prompts = [prompt_ids(build_prompt(r, template, tokenizer), tokenizer, add_special_tokens=(template != "chat"))
               [-max(1, max_length - max_new_tokens):] for r in records]
    device = next(model.parameters()).device
    gens = greedy_generate(model, prompts, tokenizer.pad_token_id, tokenizer.eos_token_id, max_new_tokens,
                           batch_size=len(prompts), device=device)
    ids, mask = left_pad([g.prompt_ids + g.new_ids for g in gens], tokenizer.pad_token_id)
    token_mask = torch.zeros_like(mask, dtype=torch.bool)
    for i, g in enumerate(gens):
        if g.new_ids:
            token_mask[i, ids.shape[1] - len(g.new_ids):] = True
    return {"input_ids": ids, "attention_mask": mask, "token_mask": token_mask, "position_ids": positions_from_mask(mask)}


def analyse(model: torch.nn.Module, tokenizer, samples: BatchedSamples, params: SteerMoEAnalysisParams,
            template: Template, max_length: int, ranks: RankInfo,
            on_batch: Callable[[], None] | None = None) -> RoutingCounts:
    """Batch b runs on rank b % world; the counts are summed over ranks."""
    layers, experts, top_k = moe_shape(model)
    counts = RoutingCounts.empty(layers, experts, top_k)
    was_training = model.training
    model.eval()
    for b, batch in enumerate(samples.batches):
        if b % ranks.world_size != ranks.rank:
            continue
        records = [samples.records[i] for i in batch]
        is_unsafe = torch.tensor([samples.groups[i] == "unsafe" for i in batch])
        if params.tokens == "response":
            inputs = batch_inputs_response(records, template, tokenizer, max_length)
        elif params.tokens == "target":
            inputs = batch_inputs_target(records, template, tokenizer, max_length)
        else:
            inputs = batch_inputs_generated(model, records, template, tokenizer, params.max_new_tokens, max_length)
        count_batch(model, counts, inputs["input_ids"], inputs["attention_mask"], inputs["token_mask"], is_unsafe,
                    inputs["position_ids"])
        if on_batch is not None:
            on_batch()   # the heartbeat's progress: a long analysis is watched batch by batch
    model.train(was_training)
    if dist.active():
        flat = dist.all_reduce_sum(torch.cat([counts.activations.flatten(), counts.tokens]).to(dist.device_for(ranks))).cpu()
        counts.activations = flat[:-2].view_as(counts.activations).clone()
        counts.tokens = flat[-2:].clone()
    return counts


def select_experts(rd: torch.Tensor, top_n: int | None, threshold: float | None, sign: str) -> list[tuple[int, int]]:
    """(layer, expert) pairs with the wanted sign of RD (never RD = 0), |RD| >= threshold, largest
    |RD| first (ties: lower layer, then lower expert), at most top_n."""
    layers, experts = rd.shape
    cands = []
    for layer in range(layers):
        for e in range(experts):
            v = float(rd[layer, e])
            linked = (sign == "negative" and v < 0) or (sign == "positive" and v > 0) or (sign == "both" and v != 0)
            if linked and (threshold is None or abs(v) >= threshold):
                cands.append((-abs(v), layer, e))
    cands.sort()
    chosen = [(layer, e) for _, layer, e in cands]
    return chosen[:top_n] if top_n is not None else chosen


def report(counts: RoutingCounts, samples: BatchedSamples, params: SteerMoEAnalysisParams, model_name: str) -> dict[str, Any]:
    p = counts.probabilities()
    rd = counts.risk_difference()
    layers, experts = rd.shape
    rows = [{"layer": layer, "expert": e, "a_safe": int(counts.activations[0, layer, e]),
             "a_unsafe": int(counts.activations[1, layer, e]), "p_safe": float(p[0, layer, e]),
             "p_unsafe": float(p[1, layer, e]), "rd": float(rd[layer, e])}
            for layer in range(layers) for e in range(experts)]
    rows.sort(key=lambda r: (-abs(r["rd"]), r["layer"], r["expert"]))
    selected = select_experts(rd, params.top_n, params.rd_threshold, params.unsafe_sign)
    return {
        "version": 1, "model": model_name, "num_layers": layers, "num_experts": experts, "top_k": counts.top_k,
        "tokens": params.tokens, "safe_per_batch": params.safe_per_batch, "unsafe_per_batch": params.unsafe_per_batch,
        "num_batches": len(samples.batches),
        "token_counts": {g: int(counts.tokens[i]) for i, g in enumerate(GROUPS)},
        "selection": {"top_n": params.top_n, "rd_threshold": params.rd_threshold, "unsafe_sign": params.unsafe_sign},
        "selected": [{"layer": layer, "expert": e, "rd": float(rd[layer, e])} for layer, e in selected],
        "experts": rows,
        "batches": samples.batch_ids(),
    }


def selected_pairs(analysis: dict[str, Any]) -> list[tuple[int, int]]:
    return [(int(s["layer"]), int(s["expert"])) for s in analysis["selected"]]


def read_analysis(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if data.get("version") != 1 or "selected" not in data:
        raise ValueError(f"{path} is not a SteerMoE analysis file")
    return data


def run_analysis(job: JobFile, params: SteerMoEAnalysisParams, model, tokenizer, samples: BatchedSamples,
                 ranks: RankInfo, on_batch: Callable[[], None] | None = None) -> dict[str, Any]:
    """Analyse, write <job dir>/steermoe_experts.json (rank 0) and return the report (every rank)."""
    template = resolve_template(params.template, tokenizer)
    counts = analyse(model, tokenizer, samples, params, template, job.training.max_length, ranks, on_batch)
    rep = report(counts, samples, params, job.model.short_name() if job.model else "")
    if ranks.rank == 0:
        write_json(Path(job.job_dir) / EXPERTS_FILE, rep)
    sel = rep["selected"]
    log.info("analysis: %s tokens, %d batches; selected %d experts: %s", rep["token_counts"], rep["num_batches"],
             len(sel), ", ".join(f"L{s['layer']}E{s['expert']}({s['rd']:+.3f})" for s in sel[:12]))
    return rep


def analysis_metrics(rep: dict[str, Any]) -> dict[str, float]:
    return {"tokens_safe": float(rep["token_counts"]["safe"]), "tokens_unsafe": float(rep["token_counts"]["unsafe"]),
            "num_batches": float(rep["num_batches"]), "num_selected": float(len(rep["selected"])),
            "max_abs_rd": max((abs(r["rd"]) for r in rep["experts"]), default=0.0)}


def run(job: JobFile) -> int:
    rank = RankJob.start(job, needs_model="")
    params = SteerMoEAnalysisParams.model_validate(job.params)
    dist.init_group(rank.ranks)
    precision = resolve_precision(job.training.precision)
    tokenizer = load_tokenizer(job.model)
    model = load_base_model(job.model, tokenizer, DTYPES[precision]).to(dist.device_for(rank.ranks))
    samples = batches_from_rows(read_rows(job.data["train"]), params.safe_per_batch, params.unsafe_per_batch,
                                same_prompt=params.tokens == "target")
    rank.heartbeat.beat("evaluating", 0, len(samples.batches))
    rep = run_analysis(job, params, model, tokenizer, samples, rank.ranks, on_batch=rank.heartbeat.advance)
    result = Result(status="succeeded", metrics=analysis_metrics(rep), dist=dist.dist_info())
    return rank.finish(result, len(samples.batches), len(samples.batches))
