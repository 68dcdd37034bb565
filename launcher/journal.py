"""The run journal: runs/<run>/run.db, SQLite with a rollback journal (journal_mode=DELETE).

Only the driver writes (agents report to it through Ray calls), so one process owns the file;
`bin/status` and friends, on any host, open it read-only and see the last committed state. Every
write is one transaction: a crash leaves the previous state, never half.

Not WAL: the run directory sits on shared storage (NFS) so that every host sees it, and WAL keeps
its index in shared memory (the -shm file, mmapped), which readers on other hosts cannot share;
SQLite's documentation says WAL does not work over a network filesystem. The rollback journal
needs only POSIX file locks, which NFS serves (NLM, or NFSv4's own locks). Its commits cost a
few more fsyncs, so the driver writes a job's progress at most once a second (controller.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, plan_file TEXT NOT NULL, created REAL NOT NULL, state TEXT NOT NULL,
    ended REAL, driver_pid INTEGER, driver_create_time REAL, driver_host TEXT, ray_address TEXT,
    owns_ray INTEGER NOT NULL DEFAULT 1, args TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY, base TEXT NOT NULL, method TEXT NOT NULL, state TEXT NOT NULL,
    needs TEXT NOT NULL, step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER,
    reason TEXT, world_size INTEGER NOT NULL, ordinal INTEGER NOT NULL, updated REAL NOT NULL,
    loss REAL, heartbeat_time REAL, signature TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    job TEXT NOT NULL, n INTEGER NOT NULL, state TEXT NOT NULL, started REAL NOT NULL, ended REAL,
    failure TEXT, exit_codes TEXT, placement TEXT NOT NULL DEFAULT '[]', resumed_from TEXT,
    start_step INTEGER, end_step INTEGER, lost_steps INTEGER, detail TEXT, changes TEXT,
    PRIMARY KEY (job, n)
);
CREATE TABLE IF NOT EXISTS processes (
    job TEXT NOT NULL, attempt INTEGER NOT NULL, rank INTEGER NOT NULL, node TEXT NOT NULL,
    pid INTEGER NOT NULL, create_time REAL NOT NULL, pgid INTEGER, role TEXT NOT NULL DEFAULT 'rank',
    ended REAL, exit_code INTEGER
);
CREATE TABLE IF NOT EXISTS checkpoints (
    job TEXT NOT NULL, attempt INTEGER NOT NULL, step INTEGER NOT NULL, path TEXT NOT NULL,
    complete INTEGER NOT NULL, seen REAL NOT NULL, PRIMARY KEY (job, path)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, job TEXT, kind TEXT NOT NULL,
    message TEXT NOT NULL, data TEXT
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, job TEXT NOT NULL, kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events(job);
CREATE INDEX IF NOT EXISTS processes_job ON processes(job, attempt);
"""


@dataclass(frozen=True)
class ProcessRecord:
    job: str
    attempt: int
    rank: int
    node: str
    pid: int
    create_time: float
    pgid: int | None
    role: str = "rank"


DecisionKind = Literal["micro_batch", "bad_checkpoint", "timeout", "restart", "give_up"]


@dataclass(frozen=True)
class Decision:
    """What the supervisor decided about a job that its later attempts must honour, also after
    bin/resume (kept apart from the events, which are for people and read back capped)."""
    job: str
    kind: DecisionKind
    # micro_batch: batch_size, grad_accum; bad_checkpoint: path, identity; timeout: phase, seconds;
    # restart / give_up (FailurePolicy's decision): attempt, action, delay, reason, avoid_nodes,
    # restarts_without_progress
    data: dict[str, Any]


class JournalError(RuntimeError):
    """A write to run.db failed (disk full, most often): the driver stops the run, not one job."""


def _dumps(v: Any) -> str | None:
    return None if v is None else json.dumps(v, default=str)


class Journal:
    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no journal at {self.path}")
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        else:
            self.db = sqlite3.connect(self.path, timeout=30)
            # Also turns the journal of a run made by an older version (WAL) back into a rollback one.
            self.db.execute("PRAGMA journal_mode=DELETE")
            self.db.execute("PRAGMA synchronous=FULL")   # a rollback journal is only crash-safe with FULL
            self.db.executescript(SCHEMA)
            self._migrate()
        self.db.row_factory = sqlite3.Row

    def _migrate(self) -> None:
        # Columns added since: a journal from an older run (bin/resume) gets them, empty.
        have = {r[1] for r in self.db.execute("PRAGMA table_info(jobs)")}
        if "signature" not in have:
            with self.tx() as db:
                db.execute("ALTER TABLE jobs ADD COLUMN signature TEXT")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: all of it lands or none of it does."""
        try:
            with self.db:
                yield self.db
        except sqlite3.OperationalError as e:
            raise JournalError(f"cannot write {self.path}: {e}") from e

    # ------------------------------------------------------------------ writes (driver only)

    def create_run(self, run_id: str, plan_file: str, args: dict[str, Any], driver_pid: int,
                   driver_create_time: float, host: str) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO runs(run_id, plan_file, created, state, driver_pid, driver_create_time, driver_host, args)"
                       " VALUES (?,?,?,?,?,?,?,?)",
                       (run_id, plan_file, time.time(), "pending", driver_pid, driver_create_time, host, _dumps(args)))

    def set_run(self, **fields: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as db:
            db.execute(f"UPDATE runs SET {cols}", tuple(fields.values()))

    def add_job(self, name: str, base: str, method: str, needs: list[str], world_size: int, ordinal: int,
                total_steps: int | None = None, signature: str | None = None) -> None:
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO jobs(name, base, method, state, needs, world_size, ordinal, updated, "
                       "total_steps, signature) VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (name, base, method, "pending", _dumps(needs), world_size, ordinal, time.time(), total_steps,
                        signature))

    def set_job(self, name: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE name=?", (*fields.values(), name))

    def start_attempt(self, job: str, n: int, placement: list[dict[str, Any]], resumed_from: str | None,
                      start_step: int, changes: dict[str, Any] | None = None, state: str = "running") -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO attempts(job, n, state, started, placement, resumed_from, start_step, changes)"
                       " VALUES (?,?,?,?,?,?,?,?)",
                       (job, n, state, time.time(), _dumps(placement), resumed_from, start_step, _dumps(changes)))
            db.execute("UPDATE jobs SET state='running', reason=NULL, updated=? WHERE name=?", (time.time(), job))

    def set_attempt(self, job: str, n: int, state: str, placement: list[dict[str, Any]]) -> None:
        """The ranks are up: where they run (the row was made when their start was asked for)."""
        with self.tx() as db:
            db.execute("UPDATE attempts SET state=?, placement=? WHERE job=? AND n=?", (state, _dumps(placement), job, n))

    def end_attempt(self, job: str, n: int, state: str, failure: str | None, exit_codes: dict[int, int | None],
                    end_step: int | None, lost_steps: int | None = None, detail: str | None = None) -> None:
        with self.tx() as db:
            db.execute("UPDATE attempts SET state=?, ended=?, failure=?, exit_codes=?, end_step=?, lost_steps=?, detail=?"
                       " WHERE job=? AND n=?",
                       (state, time.time(), failure, _dumps(exit_codes), end_step, lost_steps, detail, job, n))

    def add_processes(self, procs: list[ProcessRecord]) -> None:
        with self.tx() as db:
            db.executemany("INSERT INTO processes(job, attempt, rank, node, pid, create_time, pgid, role) VALUES (?,?,?,?,?,?,?,?)",
                           [(p.job, p.attempt, p.rank, p.node, p.pid, p.create_time, p.pgid, p.role) for p in procs])

    def end_process(self, job: str, attempt: int, pid: int, exit_code: int | None, ended: float | None = None) -> None:
        with self.tx() as db:
            db.execute("UPDATE processes SET ended=?, exit_code=? WHERE job=? AND attempt=? AND pid=? AND ended IS NULL",
                       (ended or time.time(), exit_code, job, attempt, pid))

    def record_checkpoint(self, job: str, attempt: int, step: int, path: str, complete: bool) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO checkpoints(job, attempt, step, path, complete, seen) VALUES (?,?,?,?,?,?)",
                       (job, attempt, step, path, int(complete), time.time()))

    def event(self, kind: str, message: str, job: str | None = None, **data: Any) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO events(time, job, kind, message, data) VALUES (?,?,?,?,?)",
                       (time.time(), job, kind, message, _dumps(data) if data else None))

    def record_decision(self, d: Decision) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO decisions(time, job, kind, data) VALUES (?,?,?,?)",
                       (time.time(), d.job, d.kind, json.dumps(d.data)))

    # ------------------------------------------------------------------ reads

    def decisions(self, job: str | None = None) -> list[Decision]:
        """In the order they were made, all of them."""
        q, args = "SELECT * FROM decisions", ()
        if job is not None:
            q, args = q + " WHERE job=?", (job,)
        try:
            rows = self.db.execute(q + " ORDER BY id", args).fetchall()
        except sqlite3.OperationalError:   # a read-only look at a journal from before the table
            return []
        return [Decision(r["job"], r["kind"], json.loads(r["data"])) for r in rows]

    def run(self) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM runs LIMIT 1").fetchone()

    def jobs(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM jobs ORDER BY ordinal").fetchall()

    def job(self, name: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM jobs WHERE name=?", (name,)).fetchone()

    def attempts(self, job: str | None = None) -> list[sqlite3.Row]:
        if job is None:
            return self.db.execute("SELECT * FROM attempts ORDER BY job, n").fetchall()
        return self.db.execute("SELECT * FROM attempts WHERE job=? ORDER BY n", (job,)).fetchall()

    def processes(self, job: str | None = None, attempt: int | None = None, live_only: bool = False) -> list[ProcessRecord]:
        q, args = "SELECT * FROM processes WHERE 1=1", []
        if job is not None:
            q, args = q + " AND job=?", [*args, job]
        if attempt is not None:
            q, args = q + " AND attempt=?", [*args, attempt]
        if live_only:
            q += " AND ended IS NULL"
        rows = self.db.execute(q + " ORDER BY job, attempt, rank", args).fetchall()
        return [ProcessRecord(r["job"], r["attempt"], r["rank"], r["node"], r["pid"], r["create_time"], r["pgid"], r["role"])
                for r in rows]

    def checkpoints(self, job: str) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM checkpoints WHERE job=? ORDER BY step", (job,)).fetchall()

    def events(self, job: str | None = None, limit: int = 1000) -> list[sqlite3.Row]:
        if job is None:
            return self.db.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()[::-1]
        return self.db.execute("SELECT * FROM events WHERE job=? ORDER BY id DESC LIMIT ?", (job, limit)).fetchall()[::-1]
