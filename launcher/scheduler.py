"""Which ready job to place next, and the books of which GPUs this run holds on which node.

Greedy list scheduling: among jobs whose needs succeeded, the one with the longest remaining
chain behind it (critical path, weighted by estimated duration) that fits in the free GPUs now.
Smaller jobs fill in behind a big one that must wait: no GPU idles while some ready job fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from launcher.plan import Job
from launcher.resources import ClusterShape
from launcher.spec import Resources


def estimate_seconds(job: Job) -> float:
    """A rough duration used only to rank jobs against each other on the critical path."""
    p, t = job.method_params, job.config.training
    if job.config.method == "synthetic":
        return float(p.get("startup_time", 0.0)) + float(p["steps"]) * float(p["step_time"]) + 1.0
    steps = t.max_steps if t.max_steps > 0 else 100.0 * t.epochs
    return float(steps)


ORDERS = ("critical-path", "fifo")


def pick(ready: Iterable[str], priority: dict[str, float], order: dict[str, int],
         fits: Callable[[str], bool], policy: str = "critical-path") -> str | None:
    """critical-path: longest remaining chain first; fifo: plan order (the baseline benchmarks compare)."""
    key = (lambda n: (-priority[n], order[n])) if policy == "critical-path" else (lambda n: order[n])
    for name in sorted(ready, key=key):
        if fits(name):
            return name
    return None


@dataclass
class Books:
    """GPUs held per node by this run's placed jobs (Ray's own view lags behind removals)."""

    shape: ClusterShape
    held: dict[str, int] = field(default_factory=dict)

    def choose(self, r: Resources) -> list[str] | None:
        """Nodes for the job now (best fit: the fullest nodes that still fit), or None."""
        free = [(n.gpus - self.held.get(n.node_id, 0), n.node_id) for n in self.shape.nodes
                if n.gpus - self.held.get(n.node_id, 0) >= r.gpus_per_node
                and (r.gpu_type is None or (n.gpu_type or "").lower() == r.gpu_type.lower())]
        if len(free) < r.nodes:
            return None
        return [node for _, node in sorted(free)[: r.nodes]]

    def fits(self, r: Resources) -> bool:
        return self.choose(r) is not None

    def hold(self, placement: list[dict], sign: int = 1) -> None:
        for p in placement:
            self.held[p["node"]] = self.held.get(p["node"], 0) + sign * len(p["gpus"])

    def could_ever_fit(self, r: Resources, lost: list[dict]) -> bool:
        """Whether `r` fits once every job ends, with the GPUs in `lost` (leaked memory) gone for good."""
        spare = Books(self.shape)
        spare.hold(lost)
        return spare.fits(r)

    def free_gpus(self) -> int:
        return sum(n.gpus for n in self.shape.nodes) - sum(self.held.values())
