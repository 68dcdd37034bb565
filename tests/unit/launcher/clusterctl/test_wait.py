"""What `bin/cluster wait` reports and how it knows a head listens."""

from __future__ import annotations

import socket

from launcher.clusterctl.address import reachable
from launcher.clusterctl.inventory import NodeView, alive_summary


def _node(ip: str, role: str, alive: bool = True, gpus: int = 0) -> NodeView:
    return NodeView(ip, ip, alive, role, gpus, None, None, 2, "0.1.0", "2.60.0")


def test_alive_summary_lists_live_nodes_only() -> None:
    nodes = [_node("10.0.0.1", "head"), _node("10.0.0.2", "worker", gpus=8), _node("10.0.0.3", "worker", False)]
    assert alive_summary(nodes) == "2 node(s) alive: 10.0.0.1 (head, 0 GPU(s)), 10.0.0.2 (worker, 8 GPU(s))"
    assert alive_summary([]) == "0 node(s) alive"


def test_reachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert reachable("127.0.0.1", port)
    assert not reachable("127.0.0.1", port, timeout=0.5)
