"""The prompt-masked LoRA fine-tuning rank before its Trainer: the model with its adapters, the
template, the training (and eval) set. The SFT and Lisa recipes both start from it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from transformers import set_seed

from launcher.contract import JobFile
from methods.core.precision import DTYPES, resolve_precision
from methods.core.rank import RankJob
from methods.core.training import training_arguments
from methods.data import SFTDataset, Template, read_rows, resolve_template, sft_records, to_records
from methods.models import attach_adapters, load_base_model, load_tokenizer, trainable_parameters
from methods.params import SFTParams

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """What a prompt-masked fine-tuning rank builds before its Trainer."""

    rank: RankJob
    args: Any  # TrainingArguments
    tokenizer: Any
    model: Any
    template: Template
    train_ds: SFTDataset
    eval_ds: SFTDataset | None


def setup(job: JobFile, params: SFTParams) -> Setup:
    rank = RankJob.start(job, needs_model="")
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
    return Setup(rank, args, tokenizer, model, template, train_ds, eval_ds)
