"""The typed inputs and outputs of a scheduling pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Shape(NamedTuple):
    """What a job asks for: `nodes` nodes with `gpus_per_node` free GPUs each (of `gpu_type`).
    A NamedTuple: a scheduling pass hashes shapes thousands of times, and tuples hash in C."""
    nodes: int = 1
    gpus_per_node: int = 1
    gpu_type: str | None = None

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
class Holding:
    """GPUs a running (or placed) job holds, and when it is expected to give them back."""
    name: str
    gpus: tuple[tuple[str, int], ...]   # (node id, GPUs) per node
    ends_at: float


@dataclass(frozen=True)
class Placement:
    name: str
    nodes: tuple[str, ...]   # one node id per requested node, in bundle order


@dataclass(frozen=True)
class Reservation:
    """GPUs kept for the most critical ready job that does not fit yet (EASY backfill)."""
    name: str
    at: float                    # when the GPUs are expected to be free for it
    nodes: tuple[str, ...]
