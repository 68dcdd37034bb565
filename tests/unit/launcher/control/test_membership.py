"""The comparison of two node tables that tells the controller which nodes joined or left."""

from __future__ import annotations

from launcher.control.membership import compare, gpu_nodes
from launcher.resources import ClusterShape, NodeShape

A, B, HEAD = NodeShape("a", 1), NodeShape("b", 2, "H20", 98_304), NodeShape("head", 0)


def test_nothing_changed_is_none() -> None:
    assert compare(gpu_nodes(ClusterShape((A, HEAD))), ClusterShape((HEAD, A))) is None


def test_joined_and_left_are_told_apart_and_cpu_only_nodes_ignored() -> None:
    known = gpu_nodes(ClusterShape((A, HEAD)))
    changed = compare(known, ClusterShape((B, NodeShape("head2", 0))))
    assert changed is not None and (changed.joined, changed.left) == ((B,), (A,))
    assert changed.describe() == ["node b joined: 2 GPU(s) H20", "node a left: its 1 GPU(s) are no longer offered"]
