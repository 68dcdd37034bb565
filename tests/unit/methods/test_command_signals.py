"""Reading a foreign script's progress: its output lines, its files, and when each signal last moved."""

from __future__ import annotations

from pathlib import Path

import pytest

from methods.command_signals import Activity, ProgressParser, files_fingerprint, lines


@pytest.mark.parametrize("text, step, total, loss", [
    # the HF Trainer: its progress bar (redrawn with \r) and its log dicts (values quoted in 5.x)
    ("11/100 [00:03<00:21,  4.1it/s]\r 12%|#2        | 12/100 [00:03<00:21,  4.1it/s]\r"
     "13/100 [00:03<00:21,  4.1it/s]", 13, 100, None),
    (" 12%|#2        | 12/100 [00:03<00:21,  4.1it/s]", 0, None, None),   # a bar that has not moved yet
    ("{'loss': '2.3456', 'grad_norm': '1.2', 'learning_rate': '1e-05', 'epoch': '0.12'}", 0, None, 2.3456),
    ("{'loss': 0.5, 'epoch': 1.0}", 0, None, 0.5),
    ("step 7/50 loss=3.1", 7, 50, None),
    ("Step: 30 of 40", 30, 40, None),
    ("epoch 1, step 9", 9, None, None),
    ("loading shards: nothing to see", 0, None, None),
])
def test_auto_reads_the_common_formats(text: str, step: int, total: int | None, loss: float | None) -> None:
    p = ProgressParser()
    for line in lines(text + "\n")[0]:
        p.feed(line)
    assert (p.step, p.total, p.loss) == (step, total, loss)
    assert p.bars_moving == (step > 0)


def test_a_second_bar_with_another_total_is_activity_not_steps() -> None:
    p = ProgressParser()
    for line in ["39/100 [00:10<00:15", "40/100 [00:10<00:15", " 3/8 [00:01<00:02", "41/100 [00:11<00:14",
                 " 4/8 [00:01<00:02", " 5/8 [00:01<00:02", " 6/8 [00:01<00:02"]:
        p.feed(line)
    assert (p.step, p.total, p.units) == (41, 100, 7)


def test_the_training_bar_is_neither_the_loading_bar_before_it_nor_the_evaluations_within_or_after() -> None:
    """transformers 5 prints a weights-loading bar before training, and evaluation bars after it."""
    p = ProgressParser()
    lines_seen = ["Loading weights:   0%|          | 0/21 [00:00<?, ?it/s]",
                  "Loading weights: 100%|##########| 21/21 [00:00<00:00, 2244.8it/s]",
                  "  0%|          | 0/240 [00:00<?, ?it/s]"]
    for line in lines_seen:
        p.feed(line)
    assert (p.step, p.total, p.bars_moving) == (0, None, False)   # a rank that prints only this reports no steps
    p.feed("1/240 [00:00<00:10, 10.0it/s]")
    p.feed("2/240 [00:00<00:10, 10.0it/s]")
    assert (p.step, p.total, p.bars_moving) == (2, 240, True)
    for i in range(3, 11):
        p.feed(f"{i}/240 [00:01<00:10, 10.0it/s]")
    for i in range(1, 51):                 # an evaluation at step 10, 50 batches: more moves than training so far
        p.feed(f"{i}/50 [00:00<00:00, 30.0it/s]")
    assert (p.step, p.total) == (10, 240)
    for i in range(11, 241):
        p.feed(f"{i}/240 [00:{i // 10:02d}<00:10, 10.0it/s]")
    for i in range(1, 9):                  # an evaluation after the last step
        p.feed(f"{i}/8 [00:00<00:00, 30.0it/s]")
    assert (p.step, p.total) == (240, 240)


def test_a_step_line_before_the_training_bar_does_not_hold_the_step() -> None:
    p = ProgressParser()
    p.feed("resumed from out/checkpoint-10 at step 10")
    assert p.step == 10
    for i in range(11, 31):
        p.feed(f"{i}/30 [00:01<00:02, 6.6it/s]")
    assert (p.step, p.total) == (30, 30)


def test_a_plan_regex_with_named_groups_and_off() -> None:
    p = ProgressParser(r"iter=(?P<step>\d+) of (?P<total>\d+)")
    p.feed("iter=5 of 9 step 99")
    assert (p.step, p.total) == (5, 9)
    off = ProgressParser("off")
    off.feed("step 3/4")
    assert (off.step, off.units) == (0, 0)


def test_lines_split_on_carriage_returns_and_keep_the_rest() -> None:
    assert lines("a\rb\nc") == (["a", "b"], "c")


def test_files_fingerprint_moves_with_the_scripts_files_not_the_launchers(tmp_path: Path) -> None:
    (tmp_path / "heartbeat").mkdir()
    (tmp_path / "logs").mkdir()
    before = files_fingerprint(tmp_path)
    (tmp_path / "heartbeat" / "rank-0.json").write_text("{}")
    (tmp_path / "logs" / "rank-0.log").write_text("x")
    (tmp_path / "job-1.json").write_text("{}")
    assert files_fingerprint(tmp_path) == before
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "shard.bin").write_bytes(b"12")
    grown = files_fingerprint(tmp_path)
    assert grown[:2] == (1, 2)
    (tmp_path / "out" / "shard.bin").write_bytes(b"1234")
    assert files_fingerprint(tmp_path) != grown


def test_activity_moves_per_signal_and_cpu_below_the_floor_is_idle() -> None:
    a = Activity(("output", "cpu", "gpu"), started=0.0, cpu_floor=0.1)
    assert a.update(1.0, {"output": 10, "cpu": 1.0, "gpu": None}, 1.0)     # first readings move
    assert not a.update(2.0, {"output": 10, "cpu": 1.05, "gpu": None}, 1.0)  # 5 % of a core: idle
    assert a.update(3.0, {"output": 10, "cpu": 1.5, "gpu": None}, 1.0)
    assert not a.update(9.0, {"output": 10, "cpu": 1.5, "gpu": None}, 6.0)
    assert a.idle(9.0) == {"output": 8.0, "cpu": 6.0, "gpu": 9.0} and a.ticks == 2
