"""What every Trainer-based method shares: rank identity, precision, TrainingArguments from the
TrainingSpec, a Trainer that records the samples each rank trained on, and the result file."""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import Trainer, TrainingArguments

from launcher.contract import JobDir, JobFile, Result
from launcher.contract import write_result as contract_write_result
from methods import jit_ops, tracking
from methods.callbacks import HeartbeatCallback, SampleRecorder
from methods.model_cache import converted_gguf, resolve_gguf
from methods.models import TRAINABLE_ADAPTER
from methods.zero import partition_summary

log = logging.getLogger(__name__)

Precision = Literal["bf16", "fp16", "fp32"]
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class RankInfo:
    rank: int
    local_rank: int
    world_size: int

    @classmethod
    def from_env(cls) -> "RankInfo":
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
                   int(os.environ.get("WORLD_SIZE", "1")))


def setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")


def start_rank(job: JobFile, needs_model: str | None = None) -> tuple[RankInfo, JobDir, HeartbeatCallback]:
    """What every rank does first: logging, then a 'loading' heartbeat (the supervisor's start-up
    clock runs from here), then the plan's model, checked before anything slow is loaded, then
    what the node must have before any process group exists (the converted model, DeepSpeed's ops)."""
    ranks = RankInfo.from_env()
    setup_logging(ranks.rank)
    jd = JobDir(Path(job.job_dir))
    heartbeat = HeartbeatCallback(jd.heartbeat(ranks.rank), ranks.rank, job.attempt)
    heartbeat.beat("loading")
    if needs_model is not None and job.model is None:
        raise ValueError(f"{job.method} needs a model{needs_model}")
    prepare_node(job)
    return ranks, jd, heartbeat


def prepare_node(job: JobFile) -> None:
    """Node-shared files, made before TrainingArguments starts the process group: a conversion
    done inside one depends on the rank (DESIGN.md), and a JIT build under it races the others."""
    if job.model is not None and job.model.gguf:
        converted_gguf(resolve_gguf(job.model.gguf))
    if job.deepspeed is not None:
        jit_ops.prepare(job.deepspeed)


def resolve_precision(requested: str) -> Precision:
    """auto: bf16 on GPUs that support it, fp32 otherwise. CPU always trains in fp32: CPU runs are
    tests and demos, and DeepSpeed's CPU path is only exercised here in fp32."""
    if not torch.cuda.is_available():
        if requested not in ("auto", "fp32"):
            log.warning("precision %s requested but no CUDA device: training in fp32", requested)
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return requested  # type: ignore[return-value]


def training_arguments(job: JobFile, precision: Precision, has_eval: bool) -> TrainingArguments:
    """HF TrainingArguments from the job's TrainingSpec (transformers 5.x names).

    Build this before loading the model: with ZeRO-3 it registers the DeepSpeed config that makes
    from_pretrained partition the weights while loading.
    """
    t = job.training
    cpu = not torch.cuda.is_available()
    report_to = tracking.prepare(job, RankInfo.from_env().rank)   # the trackers' environment, set here
    start = time.monotonic()
    args = TrainingArguments(
        output_dir=str(JobDir(Path(job.job_dir)).checkpoints),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        # 5.x folded warmup_ratio into warmup_steps: a float in [0, 1) is a ratio, >= 1 a step count.
        warmup_steps=min(t.warmup_ratio, 0.999999),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        seed=t.seed,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        # Checkpoint retention is ours (COMPLETE marker, then launcher.checkpoints.prune).
        save_strategy="steps",
        save_steps=job.checkpoint.every,
        save_total_limit=None,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=job.checkpoint.every if has_eval else None,
        prediction_loss_only=True,  # evaluation needs the loss only: never gather full logits
        # 5.x renamed gradient_checkpointing (the old name still works, with a FutureWarning).
        activation_checkpointing=t.gradient_checkpointing,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # Without use_cpu on a CPU machine the Trainer thinks the world size is 1 and every rank
        # trains on the whole data set (DESIGN.md). With it, accelerate sets up gloo.
        use_cpu=cpu,
        deepspeed=job.deepspeed,
        # One tracking run per job across attempts (methods/tracking.py); run_name names it.
        report_to=report_to,
        run_name=job.job,
        # sample_index must reach the collator's batch (MethodTrainer pops it before the model).
        remove_unused_columns=False,
        label_names=["labels"],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    # The process group starts here: the rendezvous waits for the slowest rank of the job.
    log.info("training arguments and process group ready in %.1f s", time.monotonic() - start)
    return args


class MethodTrainer(Trainer):
    """The Trainer every method builds on.

    Batches carry `sample_index`: it is removed before the forward pass and, in training, recorded
    with the optimizer step it belongs to (here rather than in the collator, which runs ahead of
    training and also for batches a resume skips).

    Saves write only the trainable adapter. With a stacked (frozen) start adapter PEFT would also
    write it to a subfolder, and under ZeRO-3 that copy is wrong: the Trainer's consolidated state
    dict excludes frozen parameters and PEFT then filled the subfolder with the trainable weights.
    The start adapter stays where the job's ModelSpec.adapter points.
    """

    def __init__(self, *args: Any, recorder: SampleRecorder | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.recorder = recorder
        tracking.install(self)   # TensorBoard that purges on resume, and the launcher's own series

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        indices = inputs.pop("sample_index", None)
        if indices is not None and self.recorder is not None and model.training:
            self.recorder.record(self.state.global_step + 1, indices)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        from peft import PeftModel

        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not (isinstance(model, PeftModel) and len(model.peft_config) > 1):
            return super()._save(output_dir, state_dict)
        # Trainer._save offers no selected_adapters argument: bind it for this one call.
        model.save_pretrained = functools.partial(model.save_pretrained, selected_adapters=[TRAINABLE_ADAPTER])
        try:
            super()._save(output_dir, state_dict)
        finally:
            del model.save_pretrained  # back to the class method


def dist_info(model: torch.nn.Module | None = None) -> dict[str, Any]:
    """The process group as this rank sees it: tests check gloo on CPU and the world size. Given the
    trained model under ZeRO-3, also how its trainable parameters are partitioned (`zero3`)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        info: dict[str, Any] = {"backend": str(torch.distributed.get_backend()),
                                "world_size": torch.distributed.get_world_size()}
    else:
        info = {"backend": None, "world_size": 1}
    summary = partition_summary(model) if model is not None else None
    if summary is not None:
        info["zero3"] = asdict(summary)
    return info


def write_result(job: JobFile, result: Result) -> None:
    contract_write_result(JobDir(Path(job.job_dir)).result, result)


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def finish_distributed() -> None:
    """Leave the process group cleanly, so a finished rank does not linger in gloo/NCCL teardown."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
