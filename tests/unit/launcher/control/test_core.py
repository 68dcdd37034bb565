"""The core stepped by hand: readiness as needs succeed, blocking as they fail, books as jobs run."""

from __future__ import annotations

import pytest

from launcher.control.core import Core, JobNeeds
from launcher.control.states import JobState, TransitionError
from launcher.scheduling.books import Books
from launcher.scheduling.model import Shape
from launcher.scheduling.policy import make

S = JobState


def core(policy: str = "backfill", **initial: JobState) -> Core:
    jobs = [JobNeeds("a", (), Shape(1, 2), 0, 10.0), JobNeeds("b", ("a",), Shape(1, 4), 1, 50.0),
            JobNeeds("c", ("a",), Shape(1, 1), 2, 5.0), JobNeeds("d", ("b", "c"), Shape(1, 1), 3, 1.0)]
    return Core(jobs, Books.of([("n0", 4, None)]), make(policy), initial)


def run_to_end(c: Core, name: str, now: float = 0.0) -> None:
    for s in (S.PLACING, S.STARTING, S.RUNNING, S.STOPPING):
        c.move(name, s)
    c.release(name)
    c.move(name, S.SUCCEEDED)


def test_readiness_follows_the_needs() -> None:
    c = core()
    assert c.ready() == ["a"]
    p = c.schedule(0.0)
    assert [(x.name, x.nodes) for x in p.placements] == [("a", ("n0",))]
    c.hold(p.placements[0], 0.0)
    assert c.books.free["n0"] == 2 and c.holdings["a"].ends_at == 10.0
    c.move("a", S.PLACING)
    assert c.ready() == [] and c.schedule(0.0).placements == []
    run_to_end(c, "a")
    assert c.books.free["n0"] == 4 and c.ready() == ["b", "c"]
    # b (50 s chain + d) outranks c: b takes the whole node, c waits
    assert [x.name for x in c.schedule(10.0).placements] == ["b"]


def test_a_failed_need_blocks_its_dependants_transitively() -> None:
    c = core()
    c.move("a", S.PLACING)
    c.move("a", S.FAILED)
    assert c.blocked() == [("b", "a"), ("c", "a")]
    c.move("b", S.SKIPPED)
    c.move("c", S.SKIPPED)
    assert c.blocked() == [("d", "b")]
    c.move("d", S.SKIPPED)
    assert c.blocked() == [] and c.finished()


def test_a_resumed_run_starts_with_what_succeeded() -> None:
    c = core(a=S.SUCCEEDED)
    assert c.ready() == ["b", "c"]


def test_transitions_are_checked() -> None:
    with pytest.raises(TransitionError):
        core().move("a", S.RUNNING)


def test_hold_again_where_ray_put_it_and_quarantine_on_release() -> None:
    c = Core([JobNeeds("x", (), Shape(1, 2), 0, 10.0), JobNeeds("y", (), Shape(1, 4), 1, 10.0)],
             Books.of([("n0", 4, None), ("n1", 4, None)]), make("greedy"))
    p = c.schedule(0.0)
    for x in p.placements:
        c.hold(x, 0.0)
    assert {x.name: x.nodes for x in p.placements} == {"y": ("n0",), "x": ("n1",)}
    c.hold_gpus("x", (("n0", 2),), 20.0)   # hypothetically elsewhere: the books follow
    assert (c.books.free["n0"], c.books.free["n1"]) == (-2, 4)
    c.hold_gpus("x", (("n1", 2),), 20.0)
    c.expect_end("x", 99.0)
    assert c.holdings["x"].ends_at == 99.0
    c.release("x", keep=[("n1", 2)])
    assert c.books.free["n1"] == 2 and c.quarantined == [("n1", 2)]
    assert c.could_ever_fit("y")          # n0 is whole once y ends
    c.release("y", keep=[("n0", 1)])
    assert not c.could_ever_fit("y")      # both nodes lost GPUs to leaked memory: 4 never fit again


def test_a_job_that_lost_its_node_is_placed_on_another_that_fits() -> None:
    c = Core([JobNeeds("a", (), Shape(1, 1), 0, 10.0)], Books.of([("n0", 2, None), ("n1", 2, None)]), make("backfill"))
    assert c.schedule(0.0).placements[0].nodes == ("n0",)
    c.avoid_nodes("a", ["n0"])
    p = c.schedule(0.0).placements[0]
    assert p.nodes == ("n1",)
    c.hold(p, 0.0)
    assert c.avoid == {} and c.books.free == {"n0": 2, "n1": 1}   # spent by the placement


def test_avoiding_a_node_is_soft_when_no_other_fits() -> None:
    c = Core([JobNeeds("a", (), Shape(1, 2), 0, 10.0), JobNeeds("x", (), Shape(1, 1), 1, 99.0)],
             Books.of([("n0", 2, None), ("n1", 2, None)]), make("backfill"))
    c.books.hold(["n1"], 1)   # another job holds one of n1's GPUs: only n0 takes two
    c.avoid_nodes("a", ["n0"])
    assert [(p.name, p.nodes) for p in c.schedule(0.0).placements if p.name == "a"] == [("a", ("n0",))]
