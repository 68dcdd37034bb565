"""The nodes of a running cluster as these commands report them, and which of them disagree on
versions (a node with another Ray or another launcher would fail in ways that look like bugs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.cluster import GPU_MIB_RESOURCE
from launcher.clusterctl.nodespec import RAY_VERSION_LABEL, ROLE_LABEL, VERSION_LABEL


@dataclass(frozen=True)
class NodeView:
    node_id: str
    ip: str
    alive: bool
    role: str | None
    gpus: int
    gpu_type: str | None
    gpu_mib: int | None
    cpus: int
    version: str | None        # the launcher's, from the node's label (None: not started by bin/cluster)
    ray_version: str | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.node_id, "ip": self.ip, "alive": self.alive, "role": self.role, "gpus": self.gpus,
                "gpu_type": self.gpu_type, "gpu_mib": self.gpu_mib, "cpus": self.cpus, "version": self.version,
                "ray_version": self.ray_version}


def from_ray_nodes(raw: list[dict[str, Any]]) -> list[NodeView]:
    """ray.nodes() entries -> NodeView, alive ones first."""
    out = []
    for n in raw:
        res = n.get("Resources") or {}
        labels = n.get("Labels") or {}
        kinds = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
        out.append(NodeView(n["NodeID"], n.get("NodeManagerAddress", "?"), bool(n.get("Alive")), labels.get(ROLE_LABEL),
                            int(res.get("GPU", 0)), kinds[0] if kinds else None,
                            int(res.get(GPU_MIB_RESOURCE, 0)) or None, int(res.get("CPU", 0)),
                            labels.get(VERSION_LABEL), labels.get(RAY_VERSION_LABEL)))
    return sorted(out, key=lambda v: (not v.alive, v.role != "head", v.ip))


def version_problems(nodes: list[NodeView], version: str, ray_version: str) -> list[str]:
    """One line per live node whose launcher or Ray version differs from `version` / `ray_version`."""
    out = []
    for n in nodes:
        if not n.alive:
            continue
        if n.ray_version is not None and n.ray_version != ray_version:
            out.append(f"node {n.ip} runs Ray {n.ray_version}, this host {ray_version}")
        if n.version is not None and n.version != version:
            out.append(f"node {n.ip} runs safety-launcher {n.version}, this host {version}")
    return out


def alive_summary(nodes: list[NodeView]) -> str:
    """"2 node(s) alive: 10.0.0.1 (head, 0 GPU(s)), 10.0.0.2 (worker, 8 GPU(s))", for `wait`'s messages."""
    alive = [n for n in nodes if n.alive]
    listed = ", ".join(f"{n.ip} ({n.role or '?'}, {n.gpus} GPU(s))" for n in alive)
    return f"{len(alive)} node(s) alive" + (f": {listed}" if listed else "")
