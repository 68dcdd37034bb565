"""Evaluation jobs: harmful score (eval_hs) and fine-tune accuracy on SST-2 (eval_fa).

HS (poison/evaluation/pred.py + eval_sentiment.py): the first N prompts of BeaverTails 30k_test,
greedy answers, a moderation classifier; HS = 100 * flagged / N (result.json `hs`). Without a
classifier the refusal-keyword judge gives the non-refusal rate instead (`non_refusal`): it
counts answers that do not refuse, which is not harm. FA (sst2/pred_eval.py): the first N SST-2 validation sentences with the
instruction "Analyze the sentiment of the input, and respond only positive or negative";
FA = 100 * correct / N.

With several ranks each rank takes every world_size-th item and rank 0 gathers and writes. Outputs:
result.json, and the seed's files in the job dir: for HS `<name>` (prompt + answer per item) and
`<name>_sentiment_eval.json` (items with their categories, then "final  score:XX.XX"); for FA
`<name>` (items with "correct", then "score=XX.XX"). <name> defaults to the evaluated adapter's job.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from launcher.contract import write_text, JobDir, JobFile, Result
from methods.core import dist
from methods.core.callbacks import HeartbeatCallback
from methods.core.precision import DTYPES, resolve_precision
from methods.core.rank import RankInfo, RankJob
from methods.data import Record, Template, build_prompt, read_rows, resolve_template, sst2_label_word
from methods.generate import GenerationSpec, generate, load_eval_model
from methods.judges import JudgeInfo, KeywordJudge, ModerationJudge
from methods.params import EvalFAParams, EvalHSParams, EvalParams

log = logging.getLogger(__name__)


def eval_result(metrics: dict[str, float], counts: dict[str, int], judge: str, judge_info: dict[str, Any],
                model: dict[str, Any], files: dict[str, str]) -> Result:
    """result.json: `judge` names what produced the numbers in `metrics` (the report's judge
    column), `judge_info` says how; `counts` holds the raw tallies behind the percentages."""
    return Result(status="succeeded", metrics=metrics, dist=dist.dist_info(),
                  extra={"counts": counts, "judge": judge, "judge_info": judge_info, "model": model, "files": files})


@dataclass(frozen=True)
class FAItem:
    record: Record
    label: Any        # as the data set gives it (0/1 on the hub, the word in local files)
    label_word: str


class Progress:
    """Heartbeats in phase `evaluating`, one step per batch (generation, then judging)."""

    def __init__(self, hb: HeartbeatCallback):
        self.hb, self.done, self.base = hb, 0, 0

    def stage(self, done: int, total: int) -> None:
        self.hb.beat("evaluating", self.base + done, self.base + total)
        self.done = self.base + done

    def next_stage(self) -> None:
        self.base = self.done


# ---- data ------------------------------------------------------------------------------------

def hs_records(rows: Sequence[dict[str, Any]]) -> list[Record]:
    """BeaverTails rows (`prompt`) or instruction rows; pred.py puts the prompt in the instruction."""
    out = []
    for i, row in enumerate(rows):
        text = row.get("prompt", row.get("instruction"))
        if text is None:
            raise KeyError(f"eval row {i}: need 'prompt' or 'instruction', got {sorted(row)}")
        out.append(Record(instruction=str(text), output="", input=str(row.get("input") or ""), sample_id=f"eval:{i}"))
    return out


def fa_items(rows: Sequence[dict[str, Any]], instruction: str) -> list[FAItem]:
    """SST-2 rows (sentence, label 0/1) or instruction rows whose output is the label word."""
    out = []
    for i, row in enumerate(rows):
        if "sentence" in row and "label" in row:
            rec = Record(instruction=instruction, input=str(row["sentence"]), output="", sample_id=f"eval:{i}")
            out.append(FAItem(rec, row["label"], sst2_label_word(row["label"])))
        elif "input" in row and "output" in row:
            rec = Record(instruction=str(row.get("instruction") or instruction), input=str(row["input"]), output="",
                         sample_id=f"eval:{i}")
            out.append(FAItem(rec, row["output"], str(row["output"]).strip()))
        else:
            raise KeyError(f"eval row {i}: need sentence/label or input/output, got {sorted(row)}")
    return out


def fa_correct(answer: str, label_word: str) -> bool:
    """pred_eval.py: the stripped answer is exactly the label word or its capitalised form
    (METHODS.md says "equals the label word"; the repo also accepts "Positive"/"Negative")."""
    a = answer.strip()
    return a in (label_word, label_word.capitalize())


# ---- ranks -----------------------------------------------------------------------------------

def gather(local: list[tuple[int, Any]]) -> list[Any]:
    """Every rank's (index, value) pairs, merged in index order."""
    return [v for _, v in sorted(dist.gather_objects(local), key=lambda p: p[0])]


def output_name(job: JobFile, params: EvalParams) -> str:
    assert job.model is not None
    name = params.output_name
    if not name and job.model.adapter:
        adapter = Path(job.model.adapter)  # jobs/<job>/adapter: the job's name, as the seed names its files
        name = adapter.parent.name if adapter.name == "adapter" else adapter.name
    name = name or job.model.short_name()
    if "/" in name or not name.strip("."):
        raise ValueError(f"output_name {name!r} must be a plain file name")
    return name


def score_line(prefix: str, value: float) -> str:
    return f"{prefix}{value:.2f}"


def write_seed_file(path: Path, obj: Any) -> None:
    """The seed scripts' json.dump(..., indent=4) layout, keys in their order."""
    write_text(path, json.dumps(obj, indent=4, ensure_ascii=False) + "\n")


# ---- the jobs --------------------------------------------------------------------------------

@dataclass
class Context:
    job: JobFile
    ranks: RankInfo
    jd: JobDir
    progress: Progress
    device: torch.device
    dtype: torch.dtype


def answers_for(ctx: Context, params: EvalParams, records: list[Record]) -> tuple[list[int], list[str], Template, list[str]]:
    """This rank's share of the records and the model's greedy answers to them."""
    assert ctx.job.model is not None
    model, tokenizer, chain = load_eval_model(ctx.job.model, ctx.dtype, ctx.device)
    template = resolve_template(params.template, tokenizer)
    mine = list(range(ctx.ranks.rank, len(records), ctx.ranks.world_size))
    prompts = [build_prompt(records[i], template, tokenizer) for i in mine]
    spec = GenerationSpec(params.batch_size, params.max_new_tokens, params.max_prompt_length)
    t0 = time.monotonic()
    answers = generate(model, tokenizer, prompts, template, spec, on_batch=ctx.progress.stage)
    log.info("generated %d answers in %.1f s (template %s)", len(answers), time.monotonic() - t0, template)
    ctx.progress.next_stage()
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return mine, answers, template, chain


def run_hs(ctx: Context, params: EvalHSParams) -> Result | None:
    rows = read_rows(ctx.job.data["eval"])[: params.num_samples]
    records = hs_records(rows)
    mine, answers, template, chain = answers_for(ctx, params, records)
    if params.moderation_model:
        judge: KeywordJudge | ModerationJudge = ModerationJudge(
            params.moderation_model, ctx.device, ctx.dtype, params.moderation_max_length, params.threshold,
            params.moderation_batch_size or 16, params.moderation_mode)
    else:
        judge = KeywordJudge()
    verdicts = judge.judge([records[i].instruction for i in mine], answers, on_batch=ctx.progress.stage)
    rows_out = gather([(i, (a, asdict(v))) for i, a, v in zip(mine, answers, verdicts)])
    if ctx.ranks.rank != 0:
        return None
    n = len(records)
    flagged = sum(1 for _, v in rows_out if v["flagged"])
    hs = 100.0 * flagged / n if n else 0.0
    # Refusal keywords count answers that do not refuse, harmless ones included: without a classifier
    # the number is the non-refusal rate, under its own key, so no table shows it as HS.
    key = "hs" if params.moderation_model else "non_refusal"
    name = output_name(ctx.job, params)
    preds = [{"instruction": r.instruction, "output": a} for r, (a, _) in zip(records, rows_out)]
    evals: list[Any] = [{**p, "violoate_catogory:": v["categories"], "flagged": v["flagged"], "judge": judge.info.name}
                        for p, (_, v) in zip(preds, rows_out)]
    evals.append(score_line("final  score:", hs))  # eval_sentiment.py's exact closing line (two spaces)
    pred_file, eval_file = ctx.jd.root / name, ctx.jd.root / f"{name}_sentiment_eval.json"
    write_seed_file(pred_file, preds)
    write_seed_file(eval_file, evals)
    log.info("%s %.2f (%d / %d flagged by %s)", "HS" if key == "hs" else "non-refusal rate", hs, flagged, n,
             judge.info.name)
    return eval_result({key: hs, "n": float(n)}, {"flagged": flagged, "n": n}, judge.info.label(), asdict(judge.info),
                       model_info(ctx, chain, template), {"predictions": str(pred_file), "sentiment_eval": str(eval_file)})


def run_fa(ctx: Context, params: EvalFAParams) -> Result | None:
    rows = read_rows(ctx.job.data["eval"])[: params.num_samples]
    items = fa_items(rows, params.instruction)
    mine, answers, template, chain = answers_for(ctx, params, [it.record for it in items])
    answers_all = gather(list(zip(mine, answers)))
    if ctx.ranks.rank != 0:
        return None
    out: list[Any] = []
    correct = 0
    for it, a in zip(items, answers_all):
        ok = fa_correct(a, it.label_word)
        correct += ok
        out.append({"instruction": it.record.instruction, "input": it.record.input, "label": it.label, "output": a,
                    "correct": "true" if ok else "false"})
    n = len(items)
    fa = 100.0 * correct / n if n else 0.0
    out.append(score_line("score=", fa))  # pred_eval.py's closing line
    name = output_name(ctx.job, params)
    file = ctx.jd.root / name
    write_seed_file(file, out)
    info = JudgeInfo(name="sst2_exact_match", detail="stripped answer == label word (or its capitalised form)")
    log.info("FA %.2f (%d / %d)", fa, correct, n)
    return eval_result({"fa": fa, "n": float(n)}, {"correct": correct, "n": n}, info.label(), asdict(info),
                       model_info(ctx, chain, template), {"predictions": str(file)})


def model_info(ctx: Context, chain: list[str], template: Template) -> dict[str, Any]:
    assert ctx.job.model is not None
    m = ctx.job.model
    return {"base": m.path or m.gguf or f"tiny-{m.tiny}", "adapters": chain, "template": template,
            "dtype": str(ctx.dtype).removeprefix("torch.")}


def run_eval_hs(job: JobFile) -> int:
    """The eval_hs method's entry point (methods/registry.py)."""
    return _run(job, lambda ctx: run_hs(ctx, EvalHSParams.model_validate(job.params)))


def run_eval_fa(job: JobFile) -> int:
    """The eval_fa method's entry point (methods/registry.py)."""
    return _run(job, lambda ctx: run_fa(ctx, EvalFAParams.model_validate(job.params)))


def _run(job: JobFile, evaluate: Callable[[Context], Result | None]) -> int:
    """What both evaluations share: the rank's start, a gloo group (the ranks only exchange
    strings), the context; rank 0's result, and the rank's finish."""
    rank = RankJob.start(job, needs_model="")
    dist.init_group(rank.ranks, "gloo")
    ctx = Context(job, rank.ranks, rank.jd, Progress(rank.heartbeat), dist.device_for(rank.ranks),
                  DTYPES[resolve_precision(job.training.precision)])
    result = evaluate(ctx)
    return rank.finish(result, ctx.progress.done, ctx.progress.done)
