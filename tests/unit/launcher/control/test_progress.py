"""When a job's progress is written to the journal: the first, each new step at most once a second,
the last step at once, an unchanged step rarely."""

from launcher.control.progress import PROGRESS_EVERY_S, progress_due


def test_the_first_report_of_an_attempt_is_written() -> None:
    assert progress_due(None, 100.0, 0, 50)


def test_a_new_step_waits_for_the_interval() -> None:
    assert not progress_due((100.0, 3), 100.0 + PROGRESS_EVERY_S / 2, 7, 50)
    assert progress_due((100.0, 3), 100.0 + PROGRESS_EVERY_S, 7, 50)


def test_the_last_step_is_written_at_once() -> None:
    assert progress_due((100.0, 49), 100.01, 50, 50)
    assert not progress_due((100.0, 48), 100.01, 49, 50)


def test_an_unchanged_step_only_refreshes_the_heartbeat_time_rarely() -> None:
    assert not progress_due((100.0, 5), 100.0 + 2 * PROGRESS_EVERY_S, 5, 50)
    assert progress_due((100.0, 5), 100.0 + 5 * PROGRESS_EVERY_S, 5, 50)


def test_without_a_known_total_steps_go_by_the_interval() -> None:
    assert not progress_due((100.0, 5), 100.5, 6, None)
    assert progress_due((100.0, 5), 101.0, 6, None)
