"""What the cluster offers, and whether a job's resource request can ever fit it."""

from __future__ import annotations

from dataclasses import dataclass

from launcher.spec import Resources


@dataclass(frozen=True)
class NodeShape:
    node_id: str
    gpus: int
    gpu_type: str | None = None
    gpu_mib: int | None = None   # memory of each GPU: what packed jobs share (None: unknown, no packing)


@dataclass(frozen=True)
class ClusterShape:
    nodes: tuple[NodeShape, ...]

    @classmethod
    def single(cls, gpus: int, gpu_type: str | None = None) -> "ClusterShape":
        return cls((NodeShape("local", gpus, gpu_type),))

    def describe(self) -> str:
        parts = [f"{n.gpus} GPU{'s' if n.gpus != 1 else ''}" + (f" {n.gpu_type}" if n.gpu_type else "") for n in self.nodes]
        return f"{len(self.nodes)} node{'s' if len(self.nodes) != 1 else ''} ({', '.join(parts)})"

    def why_not(self, r: Resources) -> str | None:
        """None when the request fits on an empty cluster; else the reason it never can."""
        typed = [n for n in self.nodes if r.gpu_type is None or (n.gpu_type or "").lower() == r.gpu_type.lower()]
        if r.gpu_type and not typed:
            kinds = sorted({n.gpu_type or "untyped" for n in self.nodes})
            return f"no node has gpu_type {r.gpu_type} (the cluster has {', '.join(kinds)})"
        big_enough = [n for n in typed if n.gpus >= r.gpus_per_node]
        if not big_enough:
            most = max((n.gpus for n in typed), default=0)
            return f"gpus_per_node {r.gpus_per_node} is more GPUs than any node has (largest: {most}; cluster: {self.describe()})"
        if len(big_enough) < r.nodes:
            return (f"nodes {r.nodes} x gpus_per_node {r.gpus_per_node} needs {r.nodes} nodes with that many GPUs; "
                    f"only {len(big_enough)} have them (cluster: {self.describe()})")
        return None
