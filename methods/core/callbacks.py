"""Trainer callbacks shared by the methods: heartbeat, metrics, checkpoint completeness, seen samples."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from launcher.contract import append_jsonl, checkpoints as ckpt, own_peak_rss_mib, write_heartbeat, Heartbeat, Phase
from methods.core.dist import barrier


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


class HeartbeatCallback(TrainerCallback):
    """Rewrites this rank's heartbeat at every optimizer step and phase change.

    The phase is `saving` from the step that triggers a save until the save (and its COMPLETE
    marker) is done, and `evaluating` likewise, so a supervisor can apply per-phase timeouts.
    """

    def __init__(self, path: Path, rank: int, attempt: int):
        self.path = path
        self.hb = Heartbeat(rank=rank, step=0, total_steps=0, phase="loading", pid=os.getpid(), attempt=attempt)

    def beat(self, phase: Phase | None = None, step: int | None = None, total_steps: int | None = None) -> None:
        if phase is not None:
            if phase != self.hb.phase:
                self.hb.progress = 0
            self.hb.phase = phase
        if step is not None:
            self.hb.step = step
        if total_steps is not None:
            self.hb.total_steps = total_steps
        self.hb.time = time.time()
        self.hb.rss_hwm_mib = own_peak_rss_mib()
        if torch.cuda.is_available():
            self.hb.torch_max_allocated_mib = _mib(torch.cuda.max_memory_allocated())
            self.hb.torch_max_reserved_mib = _mib(torch.cuda.max_memory_reserved())
        write_heartbeat(self.path, self.hb)

    def advance(self, min_interval: float = 1.0) -> None:
        """One more unit of work in this phase (an evaluation batch): the supervisor sees progress
        inside a long phase. Written at most every `min_interval` seconds (a file per beat)."""
        self.hb.progress += 1
        if time.time() - self.hb.time >= min_interval:
            self.beat()

    def on_prediction_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self.advance()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self.beat("training", state.global_step, state.max_steps)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        # DefaultFlowCallback ran first and set the flags for what follows this step: evaluation
        # happens before saving, so it is announced first.
        phase: Phase = "evaluating" if control.should_evaluate else "saving" if control.should_save else "training"
        self.beat(phase, state.global_step, state.max_steps)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kw: Any):
        if logs and "loss" in logs:
            self.hb.loss = float(logs["loss"])
            self.beat()

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self.beat("saving" if control.should_save else "training")

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self.beat("training")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        # The method saves its final outputs next; it writes `done` itself when they are on disk.
        self.beat("saving", state.global_step)


@dataclass
class MetricRecord:
    step: int
    time: float
    attempt: int = 1
    epoch: float | None = None
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    extra: dict[str, float] = field(default_factory=dict)  # eval_loss, train_runtime, method-specific logs


class MetricsCallback(TrainerCallback):
    """Rank 0 appends every Trainer log record to metrics.jsonl (one O_APPEND line each)."""

    NAMED = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "epoch": "epoch"}

    def __init__(self, path: Path, attempt: int):
        self.path, self.attempt = path, attempt

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kw: Any):
        if not state.is_world_process_zero or not logs:
            return
        rec = MetricRecord(step=state.global_step, time=time.time(), attempt=self.attempt)
        for key, value in logs.items():
            if not isinstance(value, (int, float)):
                continue
            if key in self.NAMED:
                setattr(rec, self.NAMED[key], float(value))
            else:
                rec.extra[key] = float(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.path, asdict(rec))


class CheckpointCallback(TrainerCallback):
    """After every rank has written its part of a checkpoint, rank 0 marks it complete and prunes.

    Must come before HeartbeatCallback in the list: the heartbeat stays `saving` until the marker exists.
    """

    def __init__(self, root: Path, keep: int, rank: int):
        self.root, self.keep, self.rank = root, keep, rank

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        # A resumed attempt re-saves steps an earlier attempt already marked complete: drop the old
        # marker first, so a crash while overwriting never leaves a broken checkpoint marked complete.
        if control.should_save and self.rank == 0:
            (self.root / f"checkpoint-{state.global_step}" / ckpt.MARKER).unlink(missing_ok=True)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        barrier()  # every rank returned from Trainer._save_checkpoint: its shards are on disk
        if self.rank == 0:
            path = self.root / f"checkpoint-{state.global_step}"
            ckpt.mark_complete(path, state.global_step, {"time": time.time(), "world_size": args.world_size})
            ckpt.prune(self.root, self.keep)


class SampleRecorder:
    """Appends the sample ids of every micro-batch this rank trained on to one JSONL file per rank
    and attempt: evidence that ranks saw disjoint shards of the data (the `use_cpu` trap)."""

    def __init__(self, path: Path, sample_ids: Sequence[str]):
        self.path = path
        self.sample_ids = list(sample_ids)
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, step: int, indices: torch.Tensor) -> None:
        ids = [self.sample_ids[i] for i in indices.tolist()]
        append_jsonl(self.path, {"step": step, "ids": ids})
