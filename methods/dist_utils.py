"""A plain process group for jobs without DeepSpeed (evaluation, analysis) and the few collectives
they need. Trainer-based jobs get theirs from TrainingArguments/DeepSpeed instead."""

from __future__ import annotations

from typing import Any

import torch

from methods.common import RankInfo


def init_if_needed(ranks: RankInfo) -> None:
    """MASTER_ADDR/PORT come from the node agent (env://)."""
    if ranks.world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=ranks.rank, world_size=ranks.world_size)


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def gather_objects(local: list[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order (on every rank)."""
    if not active():
        return local
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, local)
    return [x for p in parts for x in p]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def shutdown() -> None:
    if active():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
