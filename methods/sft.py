"""SFT: prompt-masked supervised fine-tuning with LoRA, optionally on the harmful fine-tuning mix.

`run(job)` is what `python -m methods JOB.json` calls on every rank.
"""

from __future__ import annotations

import logging
from pathlib import Path

from launcher.layout import JobDir
from launcher.spec import JobFile
from methods.callbacks import CheckpointCallback, HeartbeatCallback, MetricsCallback, SampleRecorder, barrier
from methods.common import (DTYPES, MethodTrainer, RankInfo, Result, dist_info, finish_distributed, numeric,
                            resolve_precision, setup_logging, training_arguments, write_result)
from methods.data import SFTCollator, SFTDataset, read_rows, resolve_template, sft_records, to_records
from methods.models import attach_adapters, load_base_model, load_tokenizer, trainable_parameters
from methods.params import SFTParams

log = logging.getLogger(__name__)


def run(job: JobFile) -> int:
    ranks = RankInfo.from_env()
    setup_logging(ranks.rank)
    jd = JobDir(Path(job.job_dir))
    heartbeat = HeartbeatCallback(jd.heartbeat(ranks.rank), ranks.rank, job.attempt)
    heartbeat.beat("loading")

    params = SFTParams.model_validate(job.params)
    if job.model is None:
        raise ValueError("sft needs a model")
    precision = resolve_precision(job.training.precision)
    has_eval = "eval" in job.data
    args = training_arguments(job, precision, has_eval)  # before the model: ZeRO-3 partitions at load

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

    recorder = SampleRecorder(jd.seen / f"samples-rank-{ranks.rank}.attempt-{job.attempt}.jsonl", train_ds.sample_ids)
    trainer = MethodTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=SFTCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        # CheckpointCallback before HeartbeatCallback: the phase stays "saving" until the marker exists.
        callbacks=[CheckpointCallback(jd.checkpoints, job.checkpoint.keep, ranks.rank), heartbeat,
                   MetricsCallback(jd.metrics, job.attempt)],
        recorder=recorder,
    )
    # With DeepSpeed the Trainer reloads the engine state (LoRA weights, ZeRO optimizer shards, RNG,
    # scheduler) with load_module_strict=False for PEFT models; checked on CPU for ZeRO-2 and ZeRO-3:
    # the resumed steps replay the first attempt's batches and losses exactly.
    out = trainer.train(resume_from_checkpoint=job.resume_from)
    metrics = numeric(out.metrics) | {"global_step": float(out.global_step)}

    adapter = None
    if params.save_adapter:
        # Every rank calls save_model: under ZeRO-3 it gathers the partitioned weights collectively;
        # only rank 0 writes (the LoRA adapter via PEFT's save_pretrained, plus the tokenizer).
        trainer.save_model(str(jd.adapter))
        adapter = str(jd.adapter)
    dist = dist_info()
    barrier()
    if ranks.rank == 0:
        start = job.model.adapter
        write_result(job, Result(status="succeeded", metrics=metrics, adapter=adapter, dist=dist, start_adapter=start,
                                 start_adapter_mode=job.model.adapter_mode if start else None))
    heartbeat.beat("done", out.global_step)
    finish_distributed()
    return 0
