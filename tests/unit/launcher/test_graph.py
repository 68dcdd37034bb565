"""The job DAG: dependency order (stable in plan order), cycles, dependants, critical path."""

from __future__ import annotations

import pytest

from launcher.graph import JobGraph, find_cycle


def test_order_is_dependency_order_with_ties_in_plan_order():
    g = JobGraph({"d": (), "a": (), "c": ("a",), "b": ("a",), "e": ("c", "b")})
    assert g.order() == ["d", "a", "c", "b", "e"]


def test_order_respects_every_edge_and_is_repeatable():
    needs = {"eval": ("train",), "train": ("prep",), "prep": (), "report": ("eval", "train"), "side": ()}
    g = JobGraph(needs)
    order = g.order()
    assert order == ["prep", "side", "train", "eval", "report"]
    pos = {j: i for i, j in enumerate(order)}
    assert all(pos[u] < pos[j] for j, ups in needs.items() for u in ups)
    assert [JobGraph(dict(needs)).order() for _ in range(5)] == [order] * 5


def test_dependants_are_transitive():
    g = JobGraph({"a": (), "b": ("a",), "c": ("b",), "d": ("a",), "x": ()})
    assert g.dependants("a") == {"b", "c", "d"}
    assert g.dependants("b") == {"c"}
    assert g.dependants("x") == set()


def test_critical_path_values():
    g = JobGraph({"a": (), "b": ("a",), "c": ("b",), "d": ("a",), "x": ()})
    cp = g.critical_path({"a": 1.0, "b": 2.0, "c": 3.0, "d": 10.0, "x": 0.5})
    assert cp == {"a": 11.0, "b": 5.0, "c": 3.0, "d": 10.0, "x": 0.5}


def test_critical_path_default_cost_is_one():
    g = JobGraph({"a": (), "b": ("a",), "c": ("b",)})
    assert g.critical_path({}) == {"a": 3.0, "b": 2.0, "c": 1.0}


def test_find_cycle():
    assert find_cycle({"a": (), "b": ("a",)}) is None
    cyc = find_cycle({"a": ("c",), "b": ("a",), "c": ("b",), "z": ()})
    assert cyc == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_order_raises_on_cycle():
    from graphlib import CycleError
    with pytest.raises(CycleError):
        JobGraph({"a": ("b",), "b": ("a",)}).order()


def test_plan_graph_matches_needs(load):
    plan = load("""
        jobs:
          z_last: {method: synthetic, needs: [m_mid]}
          m_mid: {method: synthetic, needs: [a_first]}
          a_first: {method: synthetic}
          lone: {method: synthetic}
    """)
    assert list(plan.jobs) == ["a_first", "lone", "m_mid", "z_last"]
    assert plan.graph.order() == list(plan.jobs)
    assert plan.graph.critical_path({}) == {"a_first": 3.0, "lone": 1.0, "m_mid": 2.0, "z_last": 1.0}
