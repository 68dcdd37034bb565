"""One rank of one job attempt: what every method does first and last.

A recipe starts with `RankJob.start(job)` (logging, the 'loading' heartbeat the supervisor's
start-up clock runs from, the model check, the node's shared files) and ends with
`rank.finish(result, ...)` (all ranks together, then rank 0 writes result.json, the 'done' beat,
the process group left). What lies between is the method's own.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from launcher.contract import JobDir, JobFile, Result, write_result
from methods import jit_ops
from methods.core import dist
from methods.core.callbacks import CheckpointCallback, HeartbeatCallback, MetricsCallback, SampleRecorder
from methods.model_cache import converted_gguf, resolve_gguf


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


def prepare_node(job: JobFile) -> None:
    """Node-shared files, made before any process group starts: a conversion done inside one
    depends on the rank (DESIGN.md), and a JIT build under it races the others."""
    if job.model is not None and job.model.gguf:
        converted_gguf(resolve_gguf(job.model.gguf))
    if job.deepspeed is not None:
        jit_ops.prepare(job.deepspeed)


@dataclass
class RankJob:
    job: JobFile
    ranks: RankInfo
    jd: JobDir
    heartbeat: HeartbeatCallback

    @classmethod
    def start(cls, job: JobFile, needs_model: str | None = None) -> "RankJob":
        """`needs_model`: this method needs a model; the text says which kind, for the error."""
        ranks = RankInfo.from_env()
        setup_logging(ranks.rank)
        jd = JobDir(Path(job.job_dir))
        heartbeat = HeartbeatCallback(jd.heartbeat(ranks.rank), ranks.rank, job.attempt)
        heartbeat.beat("loading")
        if needs_model is not None and job.model is None:
            raise ValueError(f"{job.method} needs a model{needs_model}")
        prepare_node(job)
        return cls(job, ranks, jd, heartbeat)

    @property
    def rank(self) -> int:
        return self.ranks.rank

    def recorder(self, sample_ids: Sequence[str]) -> SampleRecorder:
        """The samples this rank trained on, one file per rank and attempt (tests read them)."""
        return SampleRecorder(self.jd.seen / f"samples-rank-{self.rank}.attempt-{self.job.attempt}.jsonl", sample_ids)

    def training_callbacks(self) -> list:
        # CheckpointCallback before the heartbeat: the phase stays "saving" until the marker exists.
        return [CheckpointCallback(self.jd.checkpoints, self.job.checkpoint.keep, self.rank), self.heartbeat,
                MetricsCallback(self.jd.metrics, self.job.attempt)]

    def finish(self, result: Result | None, step: int, total: int | None = None) -> int:
        """Every rank calls this last. The barrier first: rank 0 writes result.json only once every
        rank's saves are on disk (the driver reads a result as 'the job's outputs are complete').
        None: this method wrote no result (the driver then fails the job)."""
        dist.barrier()
        if self.rank == 0 and result is not None:
            write_result(self.jd.result, result)
        self.heartbeat.beat("done", step, total)
        dist.leave()
        return 0
