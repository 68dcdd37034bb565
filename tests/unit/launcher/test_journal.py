"""The run journal: a rollback journal (NFS-safe), schema, atomic transactions, a read-only reader beside the writer, round trips."""

from __future__ import annotations

import json
import sqlite3

import pytest

from launcher.journal import Decision, Journal, ProcessRecord

TABLES = {"runs", "jobs", "attempts", "processes", "checkpoints", "events"}


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "run.db")
    j.create_run("r1", "/plans/p.yaml", {"argv": ["p.yaml"]}, driver_pid=123, driver_create_time=1.5, host="h")
    yield j
    j.close()


def test_rollback_journal_and_tables(journal, tmp_path):
    """Not WAL: its shared-memory index cannot be shared by readers on other hosts over NFS."""
    assert journal.db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert journal.db.execute("PRAGMA synchronous").fetchone()[0] == 2   # FULL
    names = {r[0] for r in journal.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert TABLES <= names
    journal.add_job("a", "a", "synthetic", [], 1, 0)
    assert not list(tmp_path.glob("run.db-*"))   # no -wal, no -shm, no journal left between writes


def test_a_wal_journal_of_an_older_run_is_turned_into_a_rollback_one(tmp_path):
    old = sqlite3.connect(tmp_path / "run.db")
    old.execute("PRAGMA journal_mode=WAL")
    old.close()
    j = Journal(tmp_path / "run.db")
    try:
        assert j.db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        j.close()


def test_reopen_is_idempotent(journal, tmp_path):
    j2 = Journal(tmp_path / "run.db")       # CREATE IF NOT EXISTS: reopening keeps the data
    assert j2.run()["run_id"] == "r1"
    j2.close()


def test_failed_transaction_leaves_nothing(journal):
    journal.add_job("a", "a", "synthetic", [], 1, 0)
    with pytest.raises(RuntimeError, match="boom"):
        with journal.tx() as db:
            db.execute("INSERT INTO events(time, job, kind, message) VALUES (1, 'a', 'k', 'm')")
            db.execute("UPDATE jobs SET state='running' WHERE name='a'")
            db.execute("INSERT INTO attempts(job, n, state, started) VALUES ('a', 1, 'running', 1)")
            raise RuntimeError("boom")
    assert journal.events() == []
    assert journal.attempts() == []
    assert journal.job("a")["state"] == "pending"
    # and the journal keeps working afterwards
    journal.event("note", "after the failure", job="a")
    assert [e["message"] for e in journal.events()] == ["after the failure"]


def test_failed_write_statement_rolls_back_the_whole_tx(journal):
    with pytest.raises(sqlite3.IntegrityError):
        with journal.tx() as db:
            db.execute("INSERT INTO events(time, job, kind, message) VALUES (1, NULL, 'k', 'first')")
            db.execute("INSERT INTO events(time, job, kind, message) VALUES (1, NULL, 'k', NULL)")  # NOT NULL
    assert journal.events() == []


def test_readonly_reader_beside_the_writer(journal, tmp_path):
    journal.add_job("a", "a", "synthetic", [], 1, 0)
    reader = Journal(tmp_path / "run.db", readonly=True)
    try:
        assert reader.run()["run_id"] == "r1"
        assert [r["name"] for r in reader.jobs()] == ["a"]
        # rows committed after the reader opened are seen
        journal.add_job("b", "b", "synthetic", ["a"], 2, 1)
        assert [r["name"] for r in reader.jobs()] == ["a", "b"]
        # an open, uncommitted write transaction is not seen
        with journal.tx() as db:
            db.execute("UPDATE jobs SET state='running' WHERE name='a'")
            assert reader.job("a")["state"] == "pending"
        assert reader.job("a")["state"] == "running"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.db.execute("DELETE FROM jobs")
    finally:
        reader.close()


def test_readonly_needs_an_existing_journal(tmp_path):
    with pytest.raises(FileNotFoundError, match="no journal at"):
        Journal(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


def test_run_and_jobs_round_trip(journal):
    run = journal.run()
    assert (run["plan_file"], run["state"], run["driver_pid"], run["driver_create_time"], run["driver_host"]) == \
        ("/plans/p.yaml", "pending", 123, 1.5, "h")
    assert json.loads(run["args"]) == {"argv": ["p.yaml"]}
    journal.set_run(state="running", ray_address="127.0.0.1:6379", owns_ray=0)
    run = journal.run()
    assert (run["state"], run["ray_address"], run["owns_ray"]) == ("running", "127.0.0.1:6379", 0)
    journal.add_job("b", "b", "sft", ["a"], 2, 1, total_steps=30)
    journal.add_job("a", "a", "sft", [], 1, 0)
    journal.add_job("a", "a", "sft", [], 1, 5)   # INSERT OR IGNORE: a resumed run re-adds harmlessly
    assert [r["name"] for r in journal.jobs()] == ["a", "b"]
    journal.set_job("b", step=12, loss=0.5, state="running")
    b = journal.job("b")
    assert (b["step"], b["loss"], b["state"], b["total_steps"], b["world_size"], json.loads(b["needs"])) == \
        (12, 0.5, "running", 30, 2, ["a"])
    assert journal.job("nope") is None


def test_attempts_round_trip(journal):
    journal.add_job("a", "a", "sft", [], 2, 0)
    placement = [{"node": "n1", "gpus": ["0", "1"]}]
    journal.start_attempt("a", 1, placement, resumed_from=None, start_step=0)
    assert journal.job("a")["state"] == "running"
    journal.end_attempt("a", 1, "failed", "crash", {0: 3, 1: None}, end_step=7, lost_steps=2, detail="rank 0 exited with 3")
    journal.start_attempt("a", 2, placement, resumed_from="/ck/checkpoint-5", start_step=5, changes={"batch_size": 1})
    a1, a2 = journal.attempts("a")
    assert (a1["n"], a1["state"], a1["failure"], a1["end_step"], a1["lost_steps"], a1["detail"]) == \
        (1, "failed", "crash", 7, 2, "rank 0 exited with 3")
    assert json.loads(a1["exit_codes"]) == {"0": 3, "1": None}
    assert json.loads(a1["placement"]) == placement
    assert a1["ended"] is not None and a1["ended"] >= a1["started"]
    assert (a2["n"], a2["state"], a2["resumed_from"], a2["start_step"], a2["ended"]) == (2, "running", "/ck/checkpoint-5", 5, None)
    assert json.loads(a2["changes"]) == {"batch_size": 1}
    assert [r["n"] for r in journal.attempts()] == [1, 2]


def test_processes_round_trip(journal):
    recs = [ProcessRecord("a", 1, 1, "n1", 201, 10.25, 201),
            ProcessRecord("a", 1, 0, "n1", 200, 10.5, 200),
            ProcessRecord("a", 1, 0, "n1", 250, 11.0, 200, role="child"),
            ProcessRecord("b", 1, 0, "n2", 300, 12.0, None)]
    journal.add_processes(recs)
    assert journal.processes("a", 1) == [recs[1], recs[2], recs[0]]   # by rank
    assert journal.processes("b") == [recs[3]]
    journal.end_process("a", 1, 200, -9)
    journal.end_process("a", 1, 200, 0)    # already ended: first exit code stays
    assert [p.pid for p in journal.processes("a", live_only=True)] == [250, 201]
    row = journal.db.execute("SELECT exit_code, ended FROM processes WHERE pid=200").fetchone()
    assert row["exit_code"] == -9 and row["ended"] is not None
    assert len(journal.processes()) == 4


def test_checkpoints_round_trip(journal):
    journal.record_checkpoint("a", 1, 10, "/ck/checkpoint-10", complete=False)
    journal.record_checkpoint("a", 1, 5, "/ck/checkpoint-5", complete=True)
    journal.record_checkpoint("a", 1, 10, "/ck/checkpoint-10", complete=True)   # same path: replaced
    rows = journal.checkpoints("a")
    assert [(r["step"], r["path"], r["complete"]) for r in rows] == [(5, "/ck/checkpoint-5", 1), (10, "/ck/checkpoint-10", 1)]


def test_events_round_trip(journal):
    journal.event("start", "job a started", job="a", attempt=1, gpus=["0"])
    journal.event("run", "run started")
    for i in range(5):
        journal.event("tick", f"t{i}", job="b")
    ev = journal.events("a")
    assert [(e["kind"], e["message"], e["job"]) for e in ev] == [("start", "job a started", "a")]
    assert json.loads(ev[0]["data"]) == {"attempt": 1, "gpus": ["0"]}
    assert journal.events()[1]["data"] is None
    assert [e["message"] for e in journal.events("b", limit=2)] == ["t3", "t4"]   # the newest, oldest first
    assert [e["message"] for e in journal.events(limit=3)] == ["t2", "t3", "t4"]


def test_decisions_come_back_all_and_in_order(tmp_path):
    j = Journal(tmp_path / "run.db")
    made = [Decision("a", "micro_batch", {"batch_size": 2, "grad_accum": 2}),
            Decision("b", "bad_checkpoint", {"path": "/r/b/checkpoint-10"})]
    made += [Decision("a", "timeout", {"phase": "training", "seconds": float(s)}) for s in range(1, 1500)]   # more than events() reads
    for d in made:
        j.record_decision(d)
    for i in range(1200):
        j.event("note", f"event {i}", job="a")
    j.close()
    ro = Journal(tmp_path / "run.db", readonly=True)
    assert ro.decisions() == made and ro.decisions("b") == [made[1]]
    assert ro.decisions("a")[-1].data == {"phase": "training", "seconds": 1499.0}
    ro.close()


def test_a_journal_from_before_decisions_reads_as_none(tmp_path):
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("CREATE TABLE runs (run_id TEXT)")
    db.close()
    assert Journal(tmp_path / "old.db", readonly=True).decisions() == []


def test_a_full_database_is_a_journal_error_and_leaves_the_last_state(tmp_path):
    from launcher.journal import JournalError
    j = Journal(tmp_path / "run.db")
    j.create_run("r1", "plan.yaml", {}, 1, 1.0, "h")
    pages = j.db.execute("PRAGMA page_count").fetchone()[0]
    j.db.execute(f"PRAGMA max_page_count={pages}")   # SQLite's own "database or disk is full"
    with pytest.raises(JournalError, match="database or disk is full"):
        for i in range(10_000):
            j.event("note", "x" * 500)
    j.db.execute("PRAGMA max_page_count=1073741823")
    j.set_run(state="failed")
    assert j.run()["state"] == "failed"
