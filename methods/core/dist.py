"""The process group as a method sees it: joining one where no Trainer does, the few collectives
evaluations and analyses need, what result.json says of the group, and leaving it cleanly.
Trainer-based jobs get their group from TrainingArguments/DeepSpeed; every other helper here is
the same for both."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

import torch

from methods.zero import partition_summary

if TYPE_CHECKING:   # rank.py imports the callbacks, which need barrier() from here
    from methods.core.rank import RankInfo

Backend = Literal["gloo", "auto"]


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_group(ranks: RankInfo, backend: Backend = "auto") -> None:
    """A plain group (env://: MASTER_ADDR/PORT come from the node agent). "gloo" where the ranks only
    exchange Python objects; "auto" is NCCL on GPUs, for tensors that live there."""
    if ranks.world_size > 1 and not active():
        name = "nccl" if backend == "auto" and torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=name, rank=ranks.rank, world_size=ranks.world_size)


def device_for(ranks: RankInfo) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


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


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def dist_info(model: torch.nn.Module | None = None) -> dict[str, Any]:
    """The process group as this rank sees it: tests check gloo on CPU and the world size. Given the
    trained model under ZeRO-3, also how its trainable parameters are partitioned (`zero3`)."""
    if active():
        info: dict[str, Any] = {"backend": str(torch.distributed.get_backend()),
                                "world_size": torch.distributed.get_world_size()}
    else:
        info = {"backend": None, "world_size": 1}
    summary = partition_summary(model) if model is not None else None
    if summary is not None:
        info["zero3"] = asdict(summary)
    return info


def leave() -> None:
    """Leave the group together, so a finished rank does not linger in gloo/NCCL teardown."""
    if active():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
