"""bin/logs' pure parts: the restart banner, which attempt comes next, interleaving ranks, and
reading lines from files that are still being written."""

from __future__ import annotations

import io
from pathlib import Path

from launcher import logs
from launcher.layout import JobDir
from launcher.logs import AttemptInfo, AttemptLogs, LineReader, banner, interleave, next_attempt


def test_banner_names_the_attempt_and_its_checkpoint() -> None:
    assert banner(AttemptInfo(2, "/runs/r/jobs/train/checkpoints/checkpoint-15")) == \
        "===== attempt 2 (resumed from checkpoint-15) ====="
    assert banner(AttemptInfo(3)) == "===== attempt 3 ====="


def test_next_attempt_is_the_first_after_the_current_one() -> None:
    known = [AttemptInfo(1), AttemptInfo(3, "c3"), AttemptInfo(2, "c2")]
    assert next_attempt(1, known) == AttemptInfo(2, "c2")
    assert next_attempt(2, known) == AttemptInfo(3, "c3")
    assert next_attempt(3, known) is None
    assert next_attempt(1, []) is None


def test_interleave_takes_ranks_in_turn_and_keeps_each_ranks_order() -> None:
    out = interleave({1: ["b1", "b2"], 0: ["a1", "a2", "a3"], 2: []})
    assert out == ["[rank 0] a1", "[rank 1] b1", "[rank 0] a2", "[rank 1] b2", "[rank 0] a3"]
    assert interleave({}) == []


def test_line_reader_holds_back_an_unfinished_line(tmp_path: Path) -> None:
    p = tmp_path / "rank-0.log"
    r = LineReader(p)
    assert r.read() == []   # not there yet
    p.write_bytes(b"one\ntw")
    assert r.read() == ["one"]
    with p.open("ab") as f:
        f.write(b"o\nthree \xff")
    assert r.read() == ["two"]
    assert r.read(final=True) == ["three \ufffd"]   # the writer is done: its last bytes count
    assert r.read(final=True) == []


def test_attempt_logs_all_ranks_finds_rank_files_as_they_appear(tmp_path: Path) -> None:
    jd = JobDir(tmp_path / "job")
    d = jd.attempt_logs(1)
    d.mkdir(parents=True)
    (d / "rank-0.log").write_text("r0 a\n")
    (d / "agent-node0.log").write_text("not a rank\n")
    al = AttemptLogs(jd, 1, None)
    assert al.read() == ["[rank 0] r0 a"]
    (d / "rank-1.log").write_text("r1 a\nr1 b\n")
    with (d / "rank-0.log").open("a") as f:
        f.write("r0 b\n")
    assert al.read() == ["[rank 0] r0 b", "[rank 1] r1 a", "[rank 1] r1 b"]
    assert AttemptLogs(jd, 1, 1).read() == ["r1 a", "r1 b"]   # one rank: no prefix


def test_attempts_on_disk_ignores_odd_names(tmp_path: Path) -> None:
    jd = JobDir(tmp_path / "job")
    assert logs.attempts_on_disk(jd) == []
    for name in ("attempt-2", "attempt-10", "attempt-x"):
        (jd.logs / name).mkdir(parents=True)
    assert logs.attempts_on_disk(jd) == [2, 10]


def test_emit_writes_whole_lines() -> None:
    out = io.StringIO()
    logs._emit(["a", "b"], out)
    assert out.getvalue() == "a\nb\n"


def _wait_for(pred, what: str) -> None:
    import time
    for _ in range(2000):
        if pred():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_follow_job_switches_attempts_with_a_banner_and_stops_when_the_job_ends(tmp_path: Path) -> None:
    """A real journal and real files, written by another thread the way the driver and ranks do."""
    import threading

    from launcher.journal import Journal
    from launcher.layout import RunDir

    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    j = Journal(rd.db)
    j.create_run("run", "plan.yaml", {}, 1, 0.0, "h")
    j.set_run(state="running")
    j.add_job("train", "train", "synthetic", [], 2, 0)
    j.start_attempt("train", 1, [], None, 0)
    jd = rd.job("train")
    jd.attempt_logs(1).mkdir(parents=True)
    jd.rank_log(1, 0).write_text("a1 first\n")
    out = io.StringIO()

    def driver() -> None:
        dj = Journal(rd.db)   # its own connection: sqlite3 connections stay in their thread
        try:
            _wait_for(lambda: "a1 first" in out.getvalue(), "the follower to print attempt 1")
            with jd.rank_log(1, 0).open("a") as f:
                f.write("a1 last, no newline")   # the rank died mid-line
            dj.start_attempt("train", 2, [], str(jd.checkpoints / "checkpoint-5"), 5)
            jd.attempt_logs(2).mkdir(parents=True)
            jd.rank_log(2, 0).write_text("a2 first\n")
            _wait_for(lambda: "a2 first" in out.getvalue(), "the follower to print attempt 2")
            with jd.rank_log(2, 0).open("a") as f:
                f.write("a2 last\n")
        finally:   # whatever happened, the job ends, so the follower returns and the output is checked
            dj.set_job("train", state="succeeded")
            dj.close()

    t = threading.Thread(target=driver)
    t.start()
    try:
        assert logs.follow_job(rd, "train", 1, 0, out, poll_s=0.005) == 0
    finally:
        t.join()
        j.close()
    assert out.getvalue() == ("a1 first\na1 last, no newline\n===== attempt 2 (resumed from checkpoint-5) =====\n"
                              "a2 first\na2 last\n")


def test_follow_waits_for_a_pending_jobs_first_attempt(tmp_path: Path) -> None:
    import threading

    from launcher.journal import Journal
    from launcher.layout import RunDir

    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    j = Journal(rd.db)
    j.create_run("run", "plan.yaml", {}, 1, 0.0, "h")
    j.set_run(state="running")
    j.add_job("later", "later", "synthetic", [], 1, 0)
    j.add_job("never", "never", "synthetic", [], 1, 1)
    j.close()
    found: list[list[int]] = []
    t = threading.Thread(target=lambda: found.append(logs.wait_for_first_attempt(rd, "later", poll_s=0.005)))
    t.start()
    (rd.job("later").attempt_logs(1)).mkdir(parents=True)
    t.join(timeout=30)
    assert found == [[1]]
    dj = Journal(rd.db)
    dj.set_job("never", state="skipped")
    dj.close()
    assert logs.wait_for_first_attempt(rd, "never", poll_s=0.005) == []   # ended without one: no wait
