"""Whole parameters under DeepSpeed ZeRO-3, which keeps only a partition of each on every rank.

ZeRO-1/2 and plain runs keep parameters whole: there these helpers do nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch


def is_partitioned(p: torch.nn.Parameter) -> bool:
    return hasattr(p, "ds_id")  # set by deepspeed.zero.Init / the ZeRO-3 engine on the params it manages


@dataclass(frozen=True)
class Zero3Partition:
    """How ZeRO-3 holds one rank's trainable parameters (result.json dist.zero3): `partitioned`
    tensors keep only a slice on this rank (local_numel of full_numel elements over all trainable
    ones); `persistent` ones (numel <= stage3_param_persistence_threshold) stay whole on every rank,
    so a test with only persistent tensors never meets a partition."""

    trainable: int
    partitioned: int
    persistent: int
    local_numel: int
    full_numel: int


def partition_summary(model: torch.nn.Module) -> Zero3Partition | None:
    """None where ZeRO-3 manages none of the trainable parameters (ZeRO-1/2, plain runs)."""
    params = [p for p in model.parameters() if p.requires_grad and is_partitioned(p)]
    if not params:
        return None
    persistent = [p for p in params if getattr(p, "ds_persist", False)]
    sliced = [p for p in params if not getattr(p, "ds_persist", False) and p.ds_tensor.numel() < p.ds_numel]
    return Zero3Partition(trainable=len(params), partitioned=len(sliced), persistent=len(persistent),
                          local_numel=sum(int(p.ds_tensor.numel()) for p in params),
                          full_numel=sum(int(p.ds_numel) for p in params))


@contextlib.contextmanager
def gathered(params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """All ranks must enter together (an all-gather). Inside, `p` is the whole tensor and takes part
    in autograd as usual: a term built from it sends its full-size gradient into ZeRO-3's own
    reduce-scatter, like a gradient from the forward pass. Nothing written inside is kept
    (modifier_rank=None): the partitions are restored unchanged on exit."""
    part = [p for p in params if is_partitioned(p)]
    if not part:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(part, modifier_rank=None):
        yield


def snapshot(named: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """Whole copies of the given parameters (identical on every rank)."""
    with gathered([p for _, p in named]):
        return {name: p.detach().clone() for name, p in named}
