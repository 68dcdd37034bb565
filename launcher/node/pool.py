"""One NodeHost per node for the run: created when the run starts (or when a node first gets a
job), replaced when it dies, killed when the run ends."""

from __future__ import annotations

import logging
from typing import Any, Iterable

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from launcher.node.host import CONCURRENCY, RemoteHost

log = logging.getLogger("launcher")


class HostPool:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self.hosts: dict[str, Any] = {}
        self.generation: dict[str, int] = {}

    def start(self, nodes: Iterable[str]) -> None:
        """Start the hosts now, so the first job on each node does not wait for a Python to start."""
        for n in nodes:
            self.host(n)

    def host(self, node: str) -> Any:
        h = self.hosts.get(node)
        if h is None:
            gen = self.generation[node] = self.generation.get(node, 0) + 1
            # Pinned to its node; no CPU or GPU of its own: the jobs' placement groups hold those.
            h = RemoteHost.options(name=f"{self.run_id}/host/{node[:12]}/{gen}", num_cpus=0, max_restarts=0,
                                   max_concurrency=CONCURRENCY,
                                   scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
                                   ).remote(self.run_id)
            self.hosts[node] = h
        return h

    def lost(self, host: Any) -> None:
        """This host died (Ray said so): the next job on its node gets a new one."""
        for node in [n for n, h in self.hosts.items() if h is host]:
            del self.hosts[node]

    def forget(self, node: str) -> None:
        """The node left the cluster: its host went with it."""
        self.hosts.pop(node, None)

    def shutdown(self) -> None:
        for h in self.hosts.values():
            try:
                ray.kill(h, no_restart=True)
            except (RayError, ValueError):
                pass
        self.hosts.clear()
