"""Whole parameters under DeepSpeed ZeRO-3, which keeps only a partition of each on every rank.

ZeRO-1/2 and plain runs keep parameters whole: there these helpers do nothing.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


def is_partitioned(p: torch.nn.Parameter) -> bool:
    return hasattr(p, "ds_id")  # set by deepspeed.zero.Init / the ZeRO-3 engine on the params it manages


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
