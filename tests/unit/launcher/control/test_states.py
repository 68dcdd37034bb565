"""The transition table: every path the controller takes, and the ones it must refuse."""

from __future__ import annotations

import pytest

from launcher.control.states import TRANSITIONS, JobState, TransitionError, move

S = JobState


@pytest.mark.parametrize("path", [
    [S.PENDING, S.PLACING, S.STARTING, S.RUNNING, S.STOPPING, S.SUCCEEDED],
    [S.PENDING, S.PLACING, S.STARTING, S.RUNNING, S.STOPPING, S.WAITING, S.PENDING, S.PLACING],
    [S.PENDING, S.SKIPPED],
    [S.PENDING, S.PLACING, S.STOPPING, S.KILLED],      # bin/kill while the placement group waits
    [S.PENDING, S.PLACING, S.STARTING, S.STOPPING, S.FAILED],
    [S.WAITING, S.KILLED],
])
def test_the_controller_s_paths(path: list[JobState]) -> None:
    for a, b in zip(path, path[1:]):
        assert move("j", a, b) is b


@pytest.mark.parametrize("a, b", [(S.PENDING, S.RUNNING), (S.RUNNING, S.SUCCEEDED), (S.SUCCEEDED, S.PENDING),
                                  (S.KILLED, S.RUNNING), (S.WAITING, S.PLACING), (S.STOPPING, S.PENDING)])
def test_what_is_refused(a: JobState, b: JobState) -> None:
    with pytest.raises(TransitionError, match=f"j: no transition {a} -> {b}"):
        move("j", a, b)


def test_terminal_states_go_nowhere_and_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert {s for s in JobState if s.is_terminal} == {s for s, nxt in TRANSITIONS.items() if not nxt}
    assert [s for s in JobState if s.holds_gpus] == [S.PLACING, S.STARTING, S.RUNNING, S.STOPPING]
