"""SFT: prompt-masked supervised fine-tuning with LoRA, optionally on the harmful fine-tuning mix.

`run(job)` is what `python -m methods JOB.json` calls on every rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from transformers import set_seed

from launcher.contract import JobDir, JobFile
from methods.callbacks import CheckpointCallback, HeartbeatCallback, MetricsCallback, SampleRecorder, barrier
from methods.common import (DTYPES, MethodTrainer, RankInfo, Result, dist_info, finish_distributed, numeric,
                            resolve_precision, start_rank, training_arguments, write_result)
from methods.data import SFTCollator, SFTDataset, Template, read_rows, resolve_template, sft_records, to_records
from methods.models import attach_adapters, load_base_model, load_tokenizer, trainable_parameters
from methods.params import SFTParams

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """What a prompt-masked fine-tuning rank builds before its Trainer (shared with Lisa)."""

    ranks: RankInfo
    jd: JobDir
    heartbeat: HeartbeatCallback
    args: Any  # TrainingArguments
    tokenizer: Any
    model: Any
    template: Template
    train_ds: SFTDataset
    eval_ds: SFTDataset | None


def setup(job: JobFile, params: SFTParams) -> Setup:
    ranks, jd, heartbeat = start_rank(job, needs_model="")
    precision = resolve_precision(job.training.precision)
    has_eval = "eval" in job.data
    args = training_arguments(job, precision, has_eval)  # before the model: ZeRO-3 partitions at load

    # LoRA's A matrices are drawn from the global RNG: seed it first, so a run's initial adapter
    # depends on training.seed only, not on what the process happened to do before.
    set_seed(job.training.seed)
    tokenizer = load_tokenizer(job.model)
    model = load_base_model(job.model, tokenizer, DTYPES[precision])
    model = attach_adapters(model, job.model, job.training.lora, job.training.gradient_checkpointing)
    n_train, n_total = trainable_parameters(model)
    log.info("model ready: %d / %d parameters trainable, precision %s", n_train, n_total, precision)

    template = resolve_template(params.template, tokenizer)
    records = sft_records(job.data, params.poison_ratio, params.sample_num)
    train_ds = SFTDataset.from_records(records, template, tokenizer, job.training.max_length)
    eval_ds = None
    if has_eval:
        eval_ds = SFTDataset.from_records(to_records(read_rows(job.data["eval"]), "eval"), template, tokenizer,
                                          job.training.max_length)
    log.info("template %s: %d training samples%s", template, len(train_ds),
             f", {len(eval_ds)} eval samples" if eval_ds is not None else "")
    return Setup(ranks, jd, heartbeat, args, tokenizer, model, template, train_ds, eval_ds)


def callbacks(job: JobFile, s: Setup) -> list:
    # CheckpointCallback before HeartbeatCallback: the phase stays "saving" until the marker exists.
    return [CheckpointCallback(s.jd.checkpoints, job.checkpoint.keep, s.ranks.rank), s.heartbeat,
            MetricsCallback(s.jd.metrics, job.attempt)]


def finish(job: JobFile, s: Setup, trainer: MethodTrainer, out: Any, save_adapter: bool,
           extra_metrics: dict[str, float] | None = None) -> int:
    metrics = numeric(out.metrics) | {"global_step": float(out.global_step)} | (extra_metrics or {})
    adapter = None
    if save_adapter:
        # Every rank calls save_model: under ZeRO-3 it gathers the partitioned weights collectively;
        # only rank 0 writes (the LoRA adapter via PEFT's save_pretrained, plus the tokenizer).
        trainer.save_model(str(s.jd.adapter))
        adapter = str(s.jd.adapter)
    dist = dist_info(s.model)
    barrier()
    if s.ranks.rank == 0:
        assert job.model is not None
        start = job.model.adapter
        write_result(job, Result(status="succeeded", metrics=metrics, adapter=adapter, dist=dist, start_adapter=start,
                                 start_adapter_mode=job.model.adapter_mode if start else None))
    s.heartbeat.beat("done", out.global_step)
    finish_distributed()
    return 0


def run(job: JobFile) -> int:
    params = SFTParams.model_validate(job.params)
    s = setup(job, params)
    recorder = SampleRecorder(s.jd.seen / f"samples-rank-{s.ranks.rank}.attempt-{job.attempt}.jsonl",
                              s.train_ds.sample_ids)
    trainer = MethodTrainer(model=s.model, args=s.args, train_dataset=s.train_ds, eval_dataset=s.eval_ds,
                            data_collator=SFTCollator(s.tokenizer.pad_token_id), processing_class=s.tokenizer,
                            callbacks=callbacks(job, s), recorder=recorder)
    # With DeepSpeed the Trainer reloads the engine state (LoRA weights, ZeRO optimizer shards, RNG,
    # scheduler) with load_module_strict=False for PEFT models; checked on CPU for ZeRO-2 and ZeRO-3:
    # the resumed steps replay the first attempt's batches and losses exactly.
    out = trainer.train(resume_from_checkpoint=job.resume_from)
    return finish(job, s, trainer, out, params.save_adapter)
