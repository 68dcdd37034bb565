"""The typed inputs and outputs of a scheduling pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Shape(NamedTuple):
    """What a job asks for: `nodes` nodes with `gpus_per_node` free GPUs each (of `gpu_type`), or,
    with `mib` > 0, that much memory on one GPU it may share with other such jobs (packing).
    A NamedTuple: a scheduling pass hashes shapes thousands of times, and tuples hash in C."""
    nodes: int = 1
    gpus_per_node: int = 1
    gpu_type: str | None = None
    mib: int = 0

    @property
    def packed(self) -> bool:
        return self.mib > 0

    @property
    def width(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class Candidate:
    """A ready job as the policy sees it: its shape, its estimated run time and its rank."""
    name: str
    shape: Shape
    estimate_s: float
    priority: float          # higher first (critical path in seconds, see priority.py)
    order: int               # plan order: ties, and the FIFO baseline


@dataclass(frozen=True)
class Share:
    """Memory a packed job holds on one GPU, beside other packed jobs."""
    node: str
    gpu: str       # the GPU's id on its node (as Ray gives it once placed; the books' guess until then)
    mib: int


@dataclass(frozen=True)
class Holding:
    """GPUs a running (or placed) job holds, and when it is expected to give them back."""
    name: str
    gpus: tuple[tuple[str, int], ...]   # (node id, GPUs) per node: whole GPUs
    ends_at: float
    share: Share | None = None          # a packed job: memory on one shared GPU instead


@dataclass(frozen=True)
class Placement:
    name: str
    nodes: tuple[str, ...]   # one node id per requested node, in bundle order
    gpu: str | None = None   # a packed job: the shared GPU on nodes[0] it goes to


@dataclass(frozen=True)
class Reservation:
    """GPUs kept for the most critical ready job that does not fit yet (EASY backfill)."""
    name: str
    at: float                    # when the GPUs are expected to be free for it
    nodes: tuple[str, ...]
