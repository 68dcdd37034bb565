"""The ready queue: priority order across shapes, and shapes dropped while walking."""

from __future__ import annotations

from launcher.scheduling.model import Candidate, Shape
from launcher.scheduling.queue import ReadyQueue


def c(name: str, gpus: int, priority: float, order: int = 0) -> Candidate:
    return Candidate(name, Shape(1, gpus), 1.0, priority, order)


def test_walk_merges_shapes_in_priority_order_then_plan_order() -> None:
    q = ReadyQueue([c("a", 1, 3), c("b", 8, 5), c("c", 1, 5, order=1), c("d", 8, 1)])
    assert [x.name for x in q.all()] == ["b", "c", "a", "d"]


def test_a_shape_skipped_while_walking_is_not_walked_further() -> None:
    q = ReadyQueue([c("w1", 8, 9), c("n1", 1, 8), c("w2", 8, 7), c("n2", 1, 6)])
    skip: set[Shape] = set()
    seen = []
    for x in q.walk(skip):
        seen.append(x.name)
        if x.name == "w1":
            skip.add(x.shape)
    assert seen == ["w1", "n1", "n2"]


def test_remove_and_re_add() -> None:
    q = ReadyQueue([c("a", 1, 3), c("b", 1, 2)])
    q.remove("a")
    q.remove("missing")
    assert [x.name for x in q.all()] == ["b"] and len(q) == 1 and "a" not in q
    q.add(c("b", 2, 9))      # the same job again, new shape and priority: replaced
    assert [x.shape.gpus_per_node for x in q.all()] == [2] and q.shapes() == [Shape(1, 2)]
