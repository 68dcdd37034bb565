"""What every Trainer-based recipe shares: TrainingArguments from the TrainingSpec, a Trainer that
records the samples each rank trained on, and the end of training (the save, the result, the
rank's finish). Precision is core/precision.py's."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from launcher.contract import JobDir, JobFile, Result
from methods import tracking
from methods.core.callbacks import SampleRecorder
from methods.core.dist import dist_info
from methods.core.precision import Precision
from methods.core.rank import RankInfo, RankJob
from methods.models import TRAINABLE_ADAPTER

log = logging.getLogger(__name__)


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


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def finish_training(rank: RankJob, trainer: Trainer, out: Any, *, save_to: Path | None, adapter: bool,
                    model: torch.nn.Module | None = None, extra_metrics: dict[str, float] | None = None) -> int:
    """The end of every Trainer recipe: the save (every rank calls save_model: under ZeRO-3 it
    gathers the partitioned weights collectively; rank 0 writes), the result, the rank's finish.

    `adapter`: what was saved is a LoRA adapter over the job's model (the result names it, and any
    frozen start adapter under it, for the jobs that use it). `model`: the trained model, whose
    ZeRO-3 partitioning the result then records."""
    job = rank.job
    metrics = numeric(out.metrics) | {"global_step": float(out.global_step)} | (extra_metrics or {})
    if save_to is not None:
        trainer.save_model(str(save_to))
    result = Result(status="succeeded", metrics=metrics, dist=dist_info(model))
    if adapter:
        assert job.model is not None
        start = job.model.adapter
        result.adapter = str(save_to) if save_to is not None else None
        result.start_adapter = start
        result.start_adapter_mode = job.model.adapter_mode if start else None
    return rank.finish(result, out.global_step)
