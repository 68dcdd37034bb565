"""`bin/launch --address` waits for the nodes a plan needs: checked against each new reading of
the cluster until it fits, the reason printed once, the last shape returned when patience runs out."""

from __future__ import annotations

from launcher.cli import wait_for_nodes
from launcher.plan import PlanError, Problem
from launcher.resources import ClusterShape, NodeShape


def _shape(n: int) -> ClusterShape:
    return ClusterShape(tuple(NodeShape(f"n{i}", 1) for i in range(n)))


def _needs(nodes: int):
    def check(shape: ClusterShape) -> None:
        if len(shape.nodes) < nodes:
            raise PlanError([Problem("plan.yaml", "jobs.a.resources", f"needs {nodes} nodes")])
    return check


def test_waits_until_the_nodes_have_joined(capsys) -> None:
    readings = iter([_shape(1), _shape(1), _shape(2), _shape(3)])
    shape = wait_for_nodes(_needs(3), patience_s=60, poll_s=0, read_shape=lambda: next(readings))
    assert len(shape.nodes) == 3
    out = capsys.readouterr().out
    assert out.count("waiting up to") == 1 and "needs 3 nodes" in out   # one line while the reason is the same


def test_gives_up_with_the_last_shape_when_patience_runs_out() -> None:
    shape = wait_for_nodes(_needs(3), patience_s=0, poll_s=0, read_shape=lambda: _shape(2))
    assert len(shape.nodes) == 2   # the caller's own load of the plan then says what does not fit


def test_a_plan_that_fits_returns_at_once(capsys) -> None:
    assert len(wait_for_nodes(_needs(1), patience_s=60, poll_s=0, read_shape=lambda: _shape(1)).nodes) == 1
    assert capsys.readouterr().out == ""
