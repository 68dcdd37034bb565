"""Lower bounds on a DAG's makespan, from the jobs' own work.

`work_bound`: no schedule beats max(GPU-seconds / GPUs, the longest dependency chain). It ignores
the node structure; `node_bound` adds what whole-node jobs cost: a job of g GPUs on each of its
nodes leaves the rest of those nodes to narrower jobs only, so jobs that need all of a node's GPUs
are packed in whole nodes (node-seconds / nodes is a bound on them alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from launcher.scheduling.priority import bottom_levels


@dataclass(frozen=True)
class Bounds:
    gpu_time_s: float        # sum of GPU-seconds / GPUs
    critical_path_s: float   # the longest chain of job durations
    whole_node_s: float      # node-seconds of whole-node jobs / nodes

    @property
    def work(self) -> float:
        return max(self.gpu_time_s, self.critical_path_s)

    @property
    def node(self) -> float:
        return max(self.work, self.whole_node_s)


def bounds(needs: Mapping[str, tuple[str, ...]], seconds: Mapping[str, float], nodes_of: Mapping[str, int],
           gpus_per_node_of: Mapping[str, int], cluster_nodes: int, gpus_per_node: int) -> Bounds:
    gpus = cluster_nodes * gpus_per_node
    area = sum(seconds[j] * nodes_of[j] * gpus_per_node_of[j] for j in seconds) / gpus
    cp = max(bottom_levels(needs, seconds).values(), default=0.0)
    whole = sum(seconds[j] * nodes_of[j] for j in seconds if gpus_per_node_of[j] == gpus_per_node) / cluster_nodes
    return Bounds(area, cp, whole)
