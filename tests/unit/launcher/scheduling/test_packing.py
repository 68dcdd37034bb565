"""Packing jobs by memory onto shared GPUs, step by step: the books, each policy, the reservation."""

from __future__ import annotations

import pytest

from launcher.scheduling.books import Books, headroom_mib
from launcher.scheduling.model import Candidate, Holding, Shape, Share
from launcher.scheduling.policy import Backfill, Fifo, Greedy, reserve
from launcher.scheduling.queue import ReadyQueue

GIB = 1024
NOW = 100.0


def books(gpus: int = 2, gib: int = 24, nodes: tuple[str, ...] = ("a",)) -> Books:
    return Books.of([(n, gpus, None) for n in nodes], {n: gib * GIB for n in nodes})


def packed(name: str, gib: float, seconds: float = 20, priority: float = 1, order: int = 0) -> Candidate:
    return Candidate(name, Shape(1, 1, None, int(gib * GIB)), seconds, priority, order)


def whole(name: str, gpus: int, seconds: float = 20, priority: float = 1, order: int = 0) -> Candidate:
    return Candidate(name, Shape(1, gpus), seconds, priority, order)


def test_a_shared_gpu_takes_needs_up_to_its_capacity_less_the_headroom_and_is_whole_again_when_empty() -> None:
    b = books()
    usable = 24 * GIB - headroom_mib(24 * GIB)
    assert b.usable_mib("a") == usable == 23348
    assert b.choose_share(3 * GIB) == ("a", "0")     # a whole GPU is opened
    b.hold_share("a", "0", 3 * GIB)
    assert b.free == {"a": 1} and b.choose_share(3 * GIB) == ("a", "0")   # then filled before another is opened
    for _ in range(6):
        b.hold_share("a", "0", 3 * GIB)
    assert b.shared["a"]["0"] == 21 * GIB and b.choose_share(3 * GIB) == ("a", "1")   # 8 x 3 GiB > usable
    assert b.choose_share(int(1.5 * GIB)) == ("a", "0")   # what still fits beside the seven goes there
    for _ in range(7):
        b.hold_share("a", "0", 3 * GIB, -1)
    assert b.free == {"a": 2} and b.shared["a"] == {}


def test_the_tightest_shared_gpu_wins_and_a_need_larger_than_a_gpu_never_packs() -> None:
    b = books(gpus=3)
    b.hold_share("a", "0", 20 * GIB)
    b.hold_share("a", "1", 10 * GIB)
    assert b.choose_share(2 * GIB) == ("a", "0")     # 20 + 2 fits the 22.8 usable: tightest
    assert b.choose_share(3 * GIB) == ("a", "1")     # 20 + 3 does not
    assert b.choose_share(23 * GIB) is None          # above the usable memory of any GPU
    assert not b.could_ever_fit(Shape(1, 1, None, 23 * GIB)) and b.could_ever_fit(Shape(1, 1, None, 22 * GIB))


def test_whole_gpu_jobs_never_get_a_shared_gpu_and_packed_jobs_never_a_held_one() -> None:
    b = books(gpus=2)
    b.hold_share("a", "0", 1 * GIB)
    assert b.choose(Shape(1, 2)) is None and b.choose(Shape(1, 1)) == ("a",)
    b.hold(["a"], 1)   # the other GPU held whole
    assert b.choose_share(1 * GIB) == ("a", "0") and not books(gpus=1).choose_share(30 * GIB)
    b.hold_share("a", "0", 1 * GIB, -1)   # the shared one empties: whole again, for either kind
    assert b.choose(Shape(1, 1)) == ("a",)


def test_a_node_with_unknown_gpu_memory_has_no_shared_gpus() -> None:
    b = Books.of([("a", 2, None)])
    assert not b.share_room() and b.choose_share(1 * GIB) is None


@pytest.mark.parametrize("policy", [Fifo(), Greedy(), Backfill()], ids=lambda p: p.name)
def test_twenty_3gib_jobs_start_fourteen_at_once_on_two_24gib_gpus(policy) -> None:   # type: ignore[no-untyped-def]
    q = ReadyQueue([packed(f"j{i:02d}", 3, order=i) for i in range(20)] + [whole("exclusive", 1, order=20)])
    p = policy.schedule(NOW, q, books(), [])
    gpus = [(x.nodes, x.gpu) for x in p.placements]
    assert len(p.placements) == 14 and gpus.count((("a",), "0")) == gpus.count((("a",), "1")) == 7
    assert "exclusive" not in {x.name for x in p.placements}   # both GPUs are shared now


def test_the_reserved_job_counts_a_shared_gpu_free_when_its_last_tenant_ends() -> None:
    b = books(gpus=2)
    b.hold_share("a", "0", 4 * GIB)
    b.hold_share("a", "0", 4 * GIB)
    b.hold(["a"], 1)
    running = [Holding("p1", (), NOW + 30, Share("a", "0", 4 * GIB)), Holding("p2", (), NOW + 50, Share("a", "0", 4 * GIB)),
               Holding("x", (("a", 1),), NOW + 40)]
    got = reserve(whole("wide", 2, priority=9), b, running, NOW)
    assert got is not None and got[0].at == NOW + 50   # GPU 0 is whole at 150 (p2), GPU 1 at 140


def test_backfill_keeps_a_packed_job_that_outlives_the_reservation_off_the_reserved_gpus() -> None:
    b = books(gpus=2)
    b.hold(["a"], 1)
    running = [Holding("x", (("a", 1),), NOW + 40)]
    q = ReadyQueue([whole("wide", 2, seconds=50, priority=9, order=0), whole("filler", 1, seconds=5, priority=1, order=1),
                    packed("long", 2, seconds=500, priority=0.5, order=2), packed("short", 2, seconds=10, priority=0.4, order=3)])
    p = Backfill().schedule(NOW, q, b, running)
    assert p.reservation is not None and p.reservation.name == "wide" and p.reservation.at == NOW + 40
    names = [x.name for x in p.placements]
    # the filler ends before 140 and takes the free GPU; no packed job may then open a GPU the
    # reservation needs (long would outlive it), and short finds no GPU left either
    assert names == ["filler"]
