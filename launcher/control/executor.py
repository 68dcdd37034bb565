"""What the controller asks of the machinery that runs ranks, and what comes back, as typed objects.

The controller (launcher/control/controller.py) never touches Ray: it gives orders (reserve GPUs,
start ranks, release an attempt) to an `Executor` and reacts to the `Event`s its `wait` returns.
`launcher.node.executor.RayExecutor` is the one that runs jobs (placement groups, node hosts);
the controller's unit tests drive an in-memory one with a fake clock, as Ray Train v2 tests its
controller. Every order and event names the job and the attempt, so a late event of an attempt
that was already given up is recognised and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Union

from launcher.resources import NodeShape
from launcher.node.messages import AgentReport, BundleInfo, Released, Started, SweepTarget
from launcher.scheduling.model import Shape
from launcher.supervision.failure import Verdict


@dataclass(frozen=True)
class ReserveOrder:
    """Hold `shape` on `nodes` (what the books chose; Ray has the last word) for one attempt."""
    job: str
    attempt: int
    shape: Shape
    nodes: tuple[str, ...]
    cpus_per_node: float = 0.0
    gpu_fraction: float = 0.0    # a packed job: this share of one GPU instead of whole GPUs


@dataclass(frozen=True)
class StartOrder:
    """Spawn the attempt's ranks in the bundles it got: `bundles[i]` runs ranks i*r .. (i+1)*r-1, r =
    `ranks_per_node` (the GPUs per node, or 1 for a command job that starts its own workers)."""
    job: str
    attempt: int
    bundles: tuple[BundleInfo, ...]
    ranks_per_node: int
    world_size: int
    job_root: Path
    job_file: Path
    env: dict[str, str]


@dataclass(frozen=True)
class ReleaseOrder:
    """Stop the attempt's ranks and give its GPUs back (`keep`: offer the reservation to the next
    placement of the same shape there, as the job ended cleanly)."""
    job: str
    attempt: int
    grace: float
    dump_stacks: bool = False
    sweeps: dict[int, SweepTarget] | None = None    # per bundle: what the journal recorded there
    verify: Path | None = None                      # a checkpoint to verify in full once the ranks are gone
    keep: bool = False


@dataclass(frozen=True)
class Reserved:
    job: str
    attempt: int
    bundles: tuple[BundleInfo, ...]


@dataclass(frozen=True)
class Spawned:
    job: str
    attempt: int
    replies: tuple[Started, ...]


@dataclass(frozen=True)
class Reported:
    """Every node's report of one look at the attempt's ranks."""
    job: str
    attempt: int
    reports: tuple[AgentReport, ...]


@dataclass(frozen=True)
class AttemptFailed:
    """The attempt cannot go on for a reason outside its ranks' heartbeats: its GPUs could not be
    read, a node host died or stopped answering (`lost`), the ranks could not be spawned (`crash`)."""
    job: str
    attempt: int
    verdict: Verdict
    detail: str


@dataclass(frozen=True)
class ReleaseDone:
    job: str
    attempt: int
    released: Released


@dataclass(frozen=True)
class NodesChanged:
    """The cluster's GPU nodes changed during the run (an event of the executor, like the attempt events)."""
    joined: tuple[NodeShape, ...]
    left: tuple[NodeShape, ...]

    def describe(self) -> list[str]:
        out = [f"node {n.node_id[:12]} joined: {n.gpus} GPU(s){' ' + n.gpu_type if n.gpu_type else ''}"
               for n in self.joined]
        return out + [f"node {n.node_id[:12]} left: its {n.gpus} GPU(s) are no longer offered" for n in self.left]


Event = Union[Reserved, Spawned, Reported, AttemptFailed, ReleaseDone, NodesChanged]


class Executor(Protocol):
    def reserve(self, order: ReserveOrder) -> None: ...

    def start(self, order: StartOrder) -> None: ...

    def release(self, order: ReleaseOrder) -> None:
        """Allowed in any stage: an attempt still placing or starting is stopped too. Answered by
        exactly one `ReleaseDone`, also for an attempt whose reservation never came to be."""
        ...

    def end_pass(self) -> None:
        """A scheduling pass is over: reservations kept for it and not taken go back."""
        ...

    def wait(self, until: float) -> list[Event]:
        """Events as they come: returns at once when there are some, else waits until `until`
        (the controller's clock) or `wake`."""
        ...

    def wake(self) -> None:
        """Thread-safe: end the current `wait` (a signal asked the run to stop)."""
        ...

    def close(self) -> None: ...
