"""Which nodes joined or left the cluster since the run last looked: a pure comparison of two
node tables, so the executor (which reads Ray's) and the controller's tests share one rule.

Only nodes with GPUs matter to the books: a CPU-only node joining (a head without GPUs) or a node
whose GPU count changed in place (Ray does not do that) is no news for the scheduler.
"""

from __future__ import annotations

from launcher.control.executor import NodesChanged
from launcher.resources import ClusterShape, NodeShape


def gpu_nodes(shape: ClusterShape) -> dict[str, NodeShape]:
    return {n.node_id: n for n in shape.nodes if n.gpus > 0}


def compare(known: dict[str, NodeShape], now: ClusterShape) -> NodesChanged | None:
    """What changed from `known` (the GPU nodes last seen) to `now`; None when nothing did."""
    current = gpu_nodes(now)
    joined = tuple(n for i, n in sorted(current.items()) if i not in known)
    left = tuple(n for i, n in sorted(known.items()) if i not in current)
    return NodesChanged(joined, left) if joined or left else None
