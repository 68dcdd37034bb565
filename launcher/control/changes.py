"""What an attempt runs differently from the plan: the micro-batch after an OOM.

Kept apart from the loop: the controller applies it after an OOM, and bin/resume replays it from
the journal (launcher/control/restore.py), so both must give the same DeepSpeed config.
"""

from __future__ import annotations

from launcher import dsconfig
from launcher.control.records import JobRun
from launcher.supervision.policy import BatchChange


def set_micro_batch(jr: JobRun, batch_size: int, grad_accum: int) -> None:
    """The job's training config and its resolved DeepSpeed config both say the new batch."""
    t = jr.job.config.training
    t.batch_size, t.grad_accum = batch_size, grad_accum
    if jr.job.ds_config is not None:
        jr.job.ds_config = dsconfig.resolve({**jr.job.ds_config, "train_micro_batch_size_per_gpu": "auto",
                                             "gradient_accumulation_steps": "auto", "train_batch_size": "auto"},
                                            t, jr.job.config.resources.world_size)


def shrink_micro_batch(jr: JobRun, smaller: BatchChange) -> tuple[int, int]:
    """OOM: a smaller micro-batch, more accumulation, the effective batch unchanged. Returns the
    (batch_size, grad_accum) it had; the next attempt's journal row shows the change."""
    t = jr.job.config.training
    before = (t.batch_size, t.grad_accum)
    set_micro_batch(jr, smaller.batch_size, smaller.grad_accum)
    jr.changes = {"batch_size": [before[0], t.batch_size], "grad_accum": [before[1], t.grad_accum]}
    return before
