"""Durations: from past journals by job signature, and from a running job's own speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.journal import Journal
from launcher.scheduling import estimates


def journal_with(path: Path, runs: list[tuple[str, float, float, str, int]]) -> None:
    j = Journal(path)
    for i, (sig, start, end, state, start_step) in enumerate(runs):
        j.add_job(f"j{i}", f"j{i}", "sft", [], 1, i, signature=sig)
        j.start_attempt(f"j{i}", 1, [], None, start_step, None)
        j.db.execute("UPDATE attempts SET started=?, ended=?, state=? WHERE job=?", (start, end, state, f"j{i}"))
        j.db.commit()
    j.close()


def test_history_keeps_succeeded_first_attempts_by_signature(tmp_path: Path) -> None:
    for run, rows in {"r1": [("s", 0, 30, "succeeded", 0), ("s", 0, 99, "failed", 0)],
                      "r2": [("s", 10, 50, "succeeded", 0), ("t", 0, 5, "succeeded", 0), ("s", 0, 1, "succeeded", 40)]}.items():
        (tmp_path / run).mkdir()
        journal_with(tmp_path / run / "run.db", rows)
    got = estimates.durations_from_journals(estimates.past_journals(tmp_path))
    assert sorted(got["s"]) == [30, 40] and got["t"] == [5]
    assert estimates.past_journals(tmp_path, exclude=tmp_path / "r1") == [tmp_path / "r2" / "run.db"]


def test_a_journal_from_before_signatures_gives_no_history(tmp_path: Path) -> None:
    import sqlite3
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE jobs (name TEXT)")
    con.commit()
    con.close()
    assert estimates.durations_from_journals([db]) == {}


def test_an_old_journal_is_migrated_when_opened_for_writing(tmp_path: Path) -> None:
    import sqlite3
    db = tmp_path / "run.db"
    Journal(db).close()
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE jobs DROP COLUMN signature")
    con.commit()
    con.close()
    j = Journal(db)
    j.add_job("x", "x", "sft", [], 1, 0, signature="abc")
    assert j.job("x")["signature"] == "abc"
    j.close()


@pytest.mark.parametrize("first, last, total, end", [
    ((100.0, 1), (110.0, 11), 51, 150.0),    # 1 s a step, 40 left
    ((100.0, 5), (100.0, 5), 50, None),      # one sample: no speed yet
    ((100.0, 1), (110.0, 11), None, None),   # no total: no end
    ((100.0, 1), (110.0, 60), 50, 110.0),    # past its total: ends now
])
def test_projected_end(first, last, total, end) -> None:
    assert estimates.projected_end(first, last, total) == end


def test_signature_follows_the_work_and_initial_prefers_history() -> None:
    from launcher.plan import load_plan
    from launcher.resources import ClusterShape
    repo = Path(__file__).resolve().parents[4]
    plan = load_plan(repo / "plans" / "pipeline_synthetic.yaml", cluster=ClusterShape.single(2))
    again = load_plan(repo / "plans" / "pipeline_synthetic.yaml", cluster=ClusterShape.single(2))
    name, job = next(iter(plan.jobs.items()))
    assert estimates.signature(job) == estimates.signature(again.jobs[name])
    planned = estimates.initial(job, {})
    assert planned.source == "plan" and planned.seconds == estimates.planned_seconds(job)
    known = estimates.initial(job, {estimates.signature(job): [30.0, 10.0, 20.0]})
    assert (known.source, known.seconds) == ("history", 20.0)
    job.method_params["steps"] = int(job.method_params["steps"]) + 1
    assert estimates.signature(job) != estimates.signature(again.jobs[name])
