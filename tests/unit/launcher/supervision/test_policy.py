"""The failure policy, one decision at a time: back-off, limits, and what each failure class changes."""

from __future__ import annotations

import pytest

from launcher.spec import RetrySpec
from launcher.supervision.failure import Verdict
from launcher.supervision.policy import (Action, BatchChange, FailurePolicy, History, checkpoint_suspect,
                                         smaller_micro_batch)


def decide(spec: RetrySpec, restarts: int, without_progress: int, verdict: str, **h):
    return FailurePolicy(spec).decide(Verdict(verdict), History(restarts, without_progress, **h))


# --------------------------------------------------------------------------- retries

def test_backoff_doubles_and_caps():
    spec = RetrySpec(max_restarts=10, backoff=5, backoff_max=30, no_progress_limit=10)
    delays = [decide(spec, n, 0, "crash").delay for n in range(6)]
    assert delays == [5, 10, 20, 30, 30, 30]
    d = decide(spec, 2, 0, "hang")
    assert (d.retry, d.reason) == (True, "hang; restart 3/10 in 20s")


def test_retry_stops_at_max_restarts():
    spec = RetrySpec(max_restarts=2, backoff=1)
    assert decide(spec, 1, 0, "crash").retry is True
    d = decide(spec, 2, 0, "crash")
    assert (d.retry, d.delay) == (False, 0)
    assert d.reason == "crash; gave up after 2 restart(s) (retry.max_restarts)"
    assert decide(RetrySpec(max_restarts=0), 0, 0, "oom").retry is False


def test_retry_stops_at_no_progress_limit():
    spec = RetrySpec(max_restarts=10, backoff=1, no_progress_limit=3)
    assert decide(spec, 2, 2, "hang").retry is True
    d = decide(spec, 3, 3, "hang")
    assert d.retry is False
    assert d.reason == "hang; no new checkpoint across 3 restarts (retry.no_progress_limit): not looping"


@pytest.mark.parametrize("verdict", ["crash", "hang", "oom", "lost"])
def test_retry_reason_names_the_verdict(verdict):
    assert decide(RetrySpec(), 0, 0, verdict).reason.startswith(f"{verdict}; restart 1/2")



def test_oom_changes_the_batch_and_keeps_the_effective_batch():
    d = decide(RetrySpec(), 0, 0, "oom", batch_size=4, grad_accum=2)
    assert (d.action, d.batch, d.retry) == (Action.CHANGE_BATCH, BatchChange(2, 4), True)


def test_oom_at_micro_batch_one_restarts_unchanged():
    d = decide(RetrySpec(), 0, 0, "oom", batch_size=1, grad_accum=8)
    assert (d.action, d.batch) == (Action.RESTART, None)


def test_lost_node_restarts_elsewhere():
    d = decide(RetrySpec(), 0, 0, "lost", nodes=("n1",))
    assert (d.action, d.avoid_nodes) == (Action.RESTART_ELSEWHERE, ("n1",))


@pytest.mark.parametrize("verdict", ["crash", "hang"])
def test_crash_and_hang_restart_in_place(verdict):
    assert decide(RetrySpec(), 0, 0, verdict, nodes=("n1",)).action is Action.RESTART


def test_giving_up_wins_over_every_change_but_keeps_the_smaller_batch_for_resume():
    d = decide(RetrySpec(max_restarts=1), 1, 0, "oom", batch_size=4)
    assert (d.action, d.batch, d.retry) == (Action.GIVE_UP, BatchChange(2, 2), False)
    assert decide(RetrySpec(max_restarts=1), 1, 0, "lost", nodes=("n1",)).avoid_nodes == ()


def test_journal_values_read_back_as_members():
    assert Verdict("oom") is Verdict.OOM and Verdict.OOM == "oom" and f"{Verdict.HANG}" == "hang"
    assert [v for v in Verdict if v.is_failure] == [Verdict.CRASH, Verdict.HANG, Verdict.OOM, Verdict.LOST, Verdict.FATAL]


@pytest.mark.parametrize("before,after", [((4, 1), (2, 2)), ((8, 2), (4, 4)), ((6, 1), (3, 2)), ((3, 1), (1, 3)),
                                          ((5, 2), (1, 10)), ((9, 1), (3, 3)), ((2, 4), (1, 8)), ((1, 4), None)])
def test_oom_micro_batch_keeps_the_effective_batch(before, after):
    got = smaller_micro_batch(*before)
    assert got == after
    if got is not None:
        assert got[0] * got[1] == before[0] * before[1] and got[0] <= before[0] // 2


@pytest.mark.parametrize("verdict, resumed, step, start, suspect", [
    ("crash", "/c/checkpoint-10", 10, 10, True),     # died at the step it resumed at
    ("crash", "/c/checkpoint-10", 0, 10, True),      # died while loading (heartbeat still at 0)
    ("crash", "/c/checkpoint-10", 11, 10, False),    # got past it: the checkpoint loaded
    ("crash", None, 0, 0, False),                    # fresh start: no checkpoint to blame
    ("hang", "/c/checkpoint-10", 0, 10, False),
    ("oom", "/c/checkpoint-10", 0, 10, False),
])
def test_checkpoint_suspect(verdict, resumed, step, start, suspect):
    assert checkpoint_suspect(verdict, resumed, step, start) is suspect


def test_a_fatal_exit_gives_up_at_once_with_restarts_left():
    d = decide(RetrySpec(max_restarts=5), 0, 0, "fatal")
    assert (d.action, d.retry) == (Action.GIVE_UP, False)
    assert "retry.on_exit_codes" in d.reason


def test_on_exit_codes_take_int_keys_from_yaml_and_refuse_an_unknown_class():
    import yaml
    from pydantic import ValidationError
    assert RetrySpec.model_validate(yaml.safe_load("on_exit_codes: {2: fatal, 75: lost}")).on_exit_codes == {
        2: "fatal", 75: "lost"}
    with pytest.raises(ValidationError, match="on_exit_codes.2"):
        RetrySpec.model_validate({"on_exit_codes": {2: "explode"}})
