"""Scheduling passes step by step: what each policy places, and what the reservation protects."""

from __future__ import annotations

from launcher.scheduling.books import Books
from launcher.scheduling.model import Candidate, Holding, Shape
from launcher.scheduling.policy import Backfill, Fifo, Greedy, make, names, reserve
from launcher.scheduling.queue import ReadyQueue

NOW = 100.0


def cand(name: str, gpus: int, seconds: float, priority: float, order: int = 0, nodes: int = 1) -> Candidate:
    return Candidate(name, Shape(nodes, gpus), seconds, priority, order)


def two_nodes(held_a: int = 0, held_b: int = 0) -> Books:
    b = Books.of([("a", 4, None), ("b", 4, None)])
    b.hold(["a"], held_a)
    b.hold(["b"], held_b)
    return b


def placed(p) -> dict[str, tuple[str, ...]]:
    return {x.name: x.nodes for x in p.placements}


def test_everything_that_fits_starts_in_priority_order() -> None:
    q = ReadyQueue([cand("low", 4, 10, 1), cand("high", 4, 10, 9), cand("mid", 2, 10, 5)])
    p = Backfill().schedule(NOW, q, two_nodes(), [])
    assert [x.name for x in p.placements] == ["high", "mid"]   # low (4) fits nowhere after them
    assert p.reservation is None   # nothing behind low was left to place: no reservation was needed


def test_the_most_critical_job_that_does_not_fit_gets_a_reservation() -> None:
    # b is busy until t=130 (3 GPUs): the 4-GPU job can start on b at 130 or on a at 120.
    running = [Holding("r1", (("a", 2),), NOW + 20), Holding("r2", (("b", 3),), NOW + 30)]
    q = ReadyQueue([cand("wide", 4, 50, 9), cand("short", 2, 15, 1), cand("long", 2, 60, 2)])
    p = Backfill().schedule(NOW, q, two_nodes(2, 3), running)
    assert p.reservation is not None and (p.reservation.name, p.reservation.at, p.reservation.nodes) == ("wide", 120.0, ("a",))
    # short ends at 115 < 120: it may use a; long would delay wide: it may not take a's GPUs
    assert placed(p) == {"short": ("a",)}


def test_a_long_job_may_backfill_where_the_reservation_leaves_room() -> None:
    running = [Holding("r1", (("a", 2),), NOW + 20)]
    q = ReadyQueue([cand("wide", 4, 50, 9), cand("long", 2, 60, 2)])
    p = Backfill().schedule(NOW, q, _ab(), running)
    assert p.reservation is not None and p.reservation.nodes == ("a",)
    assert placed(p) == {"long": ("b",)}    # b is not reserved: a job of any length may go there


def _ab() -> Books:
    b = Books.of([("a", 4, None), ("b", 2, None)])
    b.hold(["a"], 2)
    return b


def test_greedy_lets_a_long_job_delay_the_critical_one() -> None:
    running = [Holding("r1", (("a", 2),), NOW + 20), Holding("r2", (("b", 3),), NOW + 30)]
    q = ReadyQueue([cand("wide", 4, 50, 9), cand("long", 2, 60, 2)])
    assert placed(Greedy().schedule(NOW, q, two_nodes(2, 3), running)) == {"long": ("a",)}
    assert placed(Backfill().schedule(NOW, q, two_nodes(2, 3), running)) == {}


def test_fifo_is_plan_order() -> None:
    q = ReadyQueue([cand("second", 4, 10, 9, order=1), cand("first", 4, 10, 1, order=0), cand("third", 4, 1, 5, order=2)])
    assert [x.name for x in Fifo().schedule(NOW, q, two_nodes(), []).placements] == ["first", "second"]


def test_reserve_spares_what_the_reserved_nodes_have_over() -> None:
    free = Books.of([("a", 8, None), ("b", 8, None)])
    free.hold(["a"], 6)
    free.hold(["b"], 8)
    running = [Holding("x", (("a", 6),), 50.0), Holding("y", (("b", 8),), 40.0)]
    r, spare = reserve(cand("w", 8, 10, 1), free, running, 0.0)
    assert (r.at, r.nodes, spare) == (40.0, ("b",), {"b": 0})
    r, spare = reserve(cand("w", 4, 10, 1, nodes=2), free, running, 0.0)
    assert (r.at, r.nodes, spare) == (50.0, ("b", "a"), {"b": 4, "a": 4})


def test_a_job_that_can_never_fit_reserves_nothing() -> None:
    assert reserve(cand("huge", 16, 10, 1), two_nodes(), [], NOW) is None
    q = ReadyQueue([cand("huge", 16, 10, 9), cand("small", 1, 10, 1)])
    assert placed(Backfill().schedule(NOW, q, two_nodes(), [])) == {"small": ("a",)}


def test_an_overdue_job_is_expected_to_end_now() -> None:
    running = [Holding("late", (("a", 4),), NOW - 50)]
    r, _ = reserve(cand("w", 4, 10, 1), two_nodes(4, 4), running, NOW)
    assert r.at == NOW


def test_multi_node_jobs_take_whole_nodes_by_best_fit() -> None:
    b = Books.of([("a", 8, None), ("b", 8, None), ("c", 8, None)])
    b.hold(["c"], 1)
    q = ReadyQueue([cand("two", 8, 10, 9, nodes=2), cand("one", 4, 10, 1)])
    assert placed(Backfill().schedule(NOW, q, b, [])) == {"two": ("a", "b"), "one": ("c",)}


def test_names_and_the_old_name() -> None:
    assert names() == ("backfill", "greedy", "fifo", "critical-path")
    assert make("critical-path").name == "backfill" and make("fifo").name == "fifo"
