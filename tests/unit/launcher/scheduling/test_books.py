"""The books: best fit, types, vetoes, and GPUs lost to leaked memory."""

from __future__ import annotations

from launcher.scheduling.books import Books
from launcher.scheduling.model import Shape


def books() -> Books:
    return Books.of([("a", 2, "H20"), ("b", 4, "A100"), ("c", 4, "A100")])


def test_best_fit_takes_the_fullest_node_that_fits() -> None:
    b = books()
    b.hold(["b"], 3)
    assert b.choose(Shape(1, 1)) == ("b",)        # 1 free on b beats 2 on a and 4 on c
    assert b.choose(Shape(1, 2)) == ("a",)
    assert b.choose(Shape(2, 2)) == ("a", "c")
    assert b.choose(Shape(1, 4)) == ("c",)
    assert b.choose(Shape(2, 4)) is None


def test_gpu_type_is_matched_case_blind() -> None:
    assert books().choose(Shape(1, 1, "h20")) == ("a",)
    assert books().choose(Shape(1, 3, "H20")) is None


def test_a_veto_keeps_a_node_out() -> None:
    assert books().choose(Shape(1, 4), allowed=lambda n, g: n != "b") == ("c",)


def test_a_copy_shares_the_nodes_but_not_what_is_held() -> None:
    b = books()
    c = b.copy()
    c.hold(["c"], 4)
    assert (b.free["c"], c.free["c"], b.free_gpus(), b.capacity()) == (4, 0, 10, 10)


def test_leaked_gpus_make_a_job_that_needs_them_unplaceable() -> None:
    b = books()
    leaked = [("b", 2)]
    assert b.could_ever_fit(Shape(1, 2), leaked)
    assert b.could_ever_fit(Shape(1, 2, "A100"), leaked)
    assert b.could_ever_fit(Shape(1, 4), leaked)                 # c is whole
    assert not b.could_ever_fit(Shape(2, 4), leaked)
    assert not b.could_ever_fit(Shape(2, 3), leaked)


def test_a_node_the_books_never_had_is_held_without_being_offered() -> None:
    b = books()
    b.hold_gpus([("late", 2)])
    assert b.free["late"] == -2 and b.choose(Shape(1, 1), allowed=lambda n, g: n == "late") is None
    b.hold_gpus([("late", 2)], -1)
    assert b.free["late"] == 0


def test_a_node_that_joins_adds_its_gpus_and_one_that_leaves_takes_them_away() -> None:
    b = Books.of([("n0", 2, None)], {"n0": 24_576})
    b.add_node("n1", 1, "A100", 81_920)
    assert (b.capacity(), b.free_gpus(), b.usable_mib("n1")) == (3, 3, 81_920 - 4096)
    b.hold(["n1"], 1)
    b.drop_node("n1")   # while a job holds its GPU: free goes below 0 until that job's release
    assert (b.capacity(), b.free["n1"], b.usable_mib("n1")) == (2, -1, 0)
    assert b.choose(Shape(1, 1)) == ("n0",) and b.choose(Shape(2, 1)) is None
    b.hold(["n1"], 1, -1)
    assert b.free["n1"] == 0
    b.drop_node("gone")   # never known: nothing to do


def test_a_node_ray_placed_on_before_it_was_known_keeps_what_it_holds_when_it_joins() -> None:
    b = Books.of([("n0", 1, None)])
    b.hold_gpus([("n1", 1)])   # placed there by Ray before the node table said so
    b.add_node("n1", 2, None, None)
    assert b.free["n1"] == 1 and b.capacity_of["n1"] == 2
