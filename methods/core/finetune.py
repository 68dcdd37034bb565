"""A LoRA fine-tuning rank before its Trainer. `lora_model`: the rank started, its TrainingArguments
and the model with its adapters (SFT, Lisa and FABE all start there); `setup`: that plus the
prompt-masked template and training (and eval) set, where SFT and Lisa start."""

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
from methods.models import attach_adapters, attention_implementation, load_base_model, load_tokenizer, trainable_parameters
from methods.params import SFTParams

log = logging.getLogger(__name__)


@dataclass
class LoraModel:
    """A started rank's model with its adapters, and the TrainingArguments its Trainer takes."""

    rank: RankJob
    args: Any  # TrainingArguments
    tokenizer: Any
    model: Any
    attn: str   # the attention implementation the base model loaded with
    has_eval: bool


def lora_model(job: JobFile) -> LoraModel:
    rank = RankJob.start(job, needs_model="")
    precision = resolve_precision(job.training.precision)
    has_eval = "eval" in job.data
    args = training_arguments(job, precision, has_eval)  # before the model: ZeRO-3 partitions at load

    # LoRA's A matrices are drawn from the global RNG: seed it first, so a run's initial adapter
    # depends on training.seed only, not on what the process happened to do before (ZeRO-3's
    # partitioned load draws from it differently than ZeRO-2's).
    set_seed(job.training.seed)
    tokenizer = load_tokenizer(job.model)
    model = load_base_model(job.model, tokenizer, DTYPES[precision])
    attn = attention_implementation(model)
    model = attach_adapters(model, job.model, job.training.lora, job.training.gradient_checkpointing)
    n_train, n_total = trainable_parameters(model)
    log.info("model ready: %d / %d parameters trainable, precision %s, attention %s", n_train, n_total, precision, attn)
    return LoraModel(rank, args, tokenizer, model, attn, has_eval)


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
    m = lora_model(job)
    tokenizer = m.tokenizer
    template = resolve_template(params.template, tokenizer)
    records = sft_records(job.data, params.poison_ratio, params.sample_num)
    train_ds = SFTDataset.from_records(records, template, tokenizer, job.training.max_length)
    eval_ds = None
    if m.has_eval:
        eval_ds = SFTDataset.from_records(to_records(read_rows(job.data["eval"]), "eval"), template, tokenizer,
                                          job.training.max_length)
    log.info("template %s: %d training samples%s", template, len(train_ds),
             f", {len(eval_ds)} eval samples" if eval_ds is not None else "")
    return Setup(m.rank, m.args, tokenizer, m.model, template, train_ds, eval_ds)
