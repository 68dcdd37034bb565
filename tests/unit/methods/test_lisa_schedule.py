"""Lisa's schedule and guide stream against a literal transcription of the official loop."""

from __future__ import annotations

import itertools

import pytest
import torch

from methods.lisa_state import GuidePosition, GuideStream, LisaSchedule, drift, guide_indices, tensor_digest


def repo_loop(alignment_step: int, finetune_step: int, guide_data_num: int, total: int) -> list[tuple[str, str, str | None, bool]]:
    """git-disl/Lisa trainer.py, ADMMTrainer.init + check_mode + the counters of training_step,
    one call per step: (batch used, state, state switched into, proximal gate open)."""
    status = "alignment" if alignment_step != 0 and guide_data_num > 0 else "finetune"
    clock = steps = 0
    out = []
    for _ in range(total):
        inputs, switched = "user", None
        if status == "alignment":
            if clock % alignment_step == 0 and steps != 0 and finetune_step != 0:
                status, switched, clock = "finetune", "finetune", 0
            else:
                inputs = "guide"
        else:
            if clock % finetune_step == 0 and steps != 0 and alignment_step != 0 and guide_data_num > 0:
                status, switched, clock = "alignment", "alignment", 0
                inputs = "guide"
        out.append((inputs, status, switched, steps > 0.1 * total))
        steps += 1
        clock += 1
    return out


def ours(alignment_step: int, finetune_step: int, guide_data_num: int, total: int) -> list[tuple[str, str, str | None, bool]]:
    s = LisaSchedule.start(alignment_step, finetune_step, guide_data_num > 0)
    out = []
    for _ in range(total):
        switched = s.begin_step()
        out.append(("guide" if s.uses_guide else "user", s.mode, switched, s.proximal_active(total)))
        s.end_step()
    return out


GRID = list(itertools.product([0, 1, 2, 5], [1, 2, 7], [0, 10], [1, 9, 23, 60]))


@pytest.mark.parametrize("a,f,g,total", GRID)
def test_schedule_matches_the_repo_loop(a, f, g, total):
    assert ours(a, f, g, total) == repo_loop(a, f, g, total)


@pytest.mark.parametrize("a,f", [(1, 1), (2, 3), (100, 900), (3, 1)])
def test_alternation_closed_form(a, f):
    """With guide data: steps 1..a use guide batches, the next f the fine-tuning batches, and so on."""
    total = 3 * (a + f) + 2
    got = [b == "guide" for b, _, _, _ in ours(a, f, 10, total)]
    assert got == [(k % (a + f)) < a for k in range(total)]


def test_no_guide_or_no_alignment_is_finetune_throughout():
    for a, g in ((0, 10), (5, 0)):
        trace = ours(a, 3, g, 40)
        assert {b for b, *_ in trace} == {"user"} and {m for _, m, _, _ in trace} == {"finetune"}
        assert all(sw is None for *_, sw, _ in trace)


def test_finetune_step_zero_aligns_forever_without_dividing_by_zero():
    assert ours(3, 0, 10, 12) == [("guide", "alignment", None, k > 1.2) for k in range(12)]
    assert ours(0, 0, 10, 5) == [("user", "finetune", None, k > 0.5) for k in range(5)]  # the repo: ZeroDivisionError


def test_proximal_gate_is_read_before_the_step_counts():
    # total 30: steps > 3 opens the gate from the 5th step (steps == 4 before its increment).
    assert [p for *_, p in ours(2, 3, 10, 30)][:6] == [False, False, False, False, True, True]


@pytest.mark.parametrize("n,bs,world", [(12, 2, 2), (10, 3, 2), (5, 4, 2), (7, 2, 1)])
def test_guide_stream_cycles_every_row_each_pass(n, bs, world):
    streams = [GuideStream(n, bs, world, r, seed=7) for r in range(world)]
    per_pass = streams[0].batches_per_pass
    for epoch in range(3):
        seen = []
        for _ in range(per_pass):
            batch = [s.next_indices() for s in streams]
            assert all(len(b) == bs for b in batch)
            flat = [i for b in batch for i in b]
            if n >= world * bs:
                assert len(set(flat)) == len(flat)  # ranks draw disjoint rows within a global batch
            seen += flat
        assert set(seen) == set(range(n))  # every row once per pass (a short last batch is topped up)
        assert len(seen) == per_pass * world * bs
        assert all(s.position == GuidePosition(epoch + 1, 0) for s in streams)


def test_guide_stream_resumes_from_its_position_and_depends_on_seed():
    a = GuideStream(11, 2, 2, 1, seed=3)
    first = [a.next_indices() for _ in range(5)]
    b = GuideStream(11, 2, 2, 1, seed=3, position=GuidePosition(**vars(a.position)))
    assert [a.next_indices() for _ in range(9)] == [b.next_indices() for _ in range(9)]
    c = GuideStream(11, 2, 2, 1, seed=3)
    assert [c.next_indices() for _ in range(5)] == first
    assert guide_indices(50, 4, 1, 0, 3, 0, 0) != guide_indices(50, 4, 1, 0, 4, 0, 0)
    assert guide_indices(50, 4, 1, 0, 3, 0, 0) != guide_indices(50, 4, 1, 0, 3, 1, 0)


def test_drift_and_digest():
    g = torch.Generator().manual_seed(0)
    a = {"x": torch.randn(3, 4, generator=g), "y": torch.randn(5, generator=g)}
    b = {k: v + 0.5 for k, v in a.items()}
    assert drift(a, b) == pytest.approx(0.25 * 17, rel=1e-6)  # b - a is 0.5 up to float32 rounding
    assert drift(a, a) == 0.0
    assert tensor_digest(a) == tensor_digest({k: v.clone() for k, v in a.items()})
    c = {k: v.clone() for k, v in a.items()}
    c["y"][2] = torch.nextafter(c["y"][2], torch.tensor(10.0))  # one ulp
    assert tensor_digest(a) != tensor_digest(c)
