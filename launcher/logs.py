"""`bin/logs`: a job's rank logs (one rank or all, interleaved), followed across restarts; the
driver's log; the node agents' own logs.

Reads only files and run.db (read-only), so it works during the run, after it, and on any
machine with the run directory. Following (-f) stays with the job, not with one attempt: when
the supervisor starts attempt N+1 it finishes printing attempt N, prints a banner and goes on
with N+1's files; it returns once the job or the run is over or the driver is gone.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from launcher import pathcheck
from launcher.agentlog import AGENT_LOG_GLOB
from launcher.journal import Journal
from launcher.layout import JobDir, RunDir
from launcher.runarg import add_run_arguments, open_run

POLL_S = 0.5
JOB_OVER = ("succeeded", "failed", "skipped", "killed")


# ---------------------------------------------------------------------------------------- pure parts

@dataclass(frozen=True)
class AttemptInfo:
    n: int
    resumed_from: str | None = None   # the checkpoint directory it started from


def banner(a: AttemptInfo) -> str:
    resumed = f" (resumed from {Path(a.resumed_from).name})" if a.resumed_from else ""
    return f"===== attempt {a.n}{resumed} ====="


def next_attempt(current: int, known: list[AttemptInfo]) -> AttemptInfo | None:
    """The attempt to follow after `current`: the first one after it (an attempt that never
    wrote a log is still passed through, so its banner says it existed)."""
    later = sorted((a for a in known if a.n > current), key=lambda a: a.n)
    return later[0] if later else None


def prefix(rank: int, line: str) -> str:
    return f"[rank {rank}] {line}"


def interleave(new_lines: dict[int, list[str]]) -> list[str]:
    """All ranks' new lines as one stream: ranks in turn, a line each, each line prefixed with
    its rank. Each rank's own order is kept; ranks stepping in lockstep come out side by side."""
    out: list[str] = []
    queues = {r: list(lines) for r, lines in sorted(new_lines.items())}
    i = 0
    while any(i < len(q) for q in queues.values()):
        for r, q in queues.items():
            if i < len(q):
                out.append(prefix(r, q[i]))
        i += 1
    return out


@dataclass
class LineReader:
    """Complete lines appended to a file since the last read; a last line without its newline is
    held back until it is finished (or until `final`, when the writer is known to be done)."""

    path: Path
    offset: int = 0
    partial: bytes = b""

    def read(self, final: bool = False) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        return [line.decode(errors="replace") for line in lines]


@dataclass
class AttemptLogs:
    """The rank logs of one attempt being printed: one rank, or every rank file there is."""

    jd: JobDir
    attempt: int
    rank: int | None   # None: all ranks
    readers: dict[int, LineReader] = field(default_factory=dict)

    def _discover(self) -> None:
        if self.rank is not None:
            ranks = [self.rank]
        else:   # rank files appear as the agents spawn them
            d = self.jd.attempt_logs(self.attempt)
            ranks = sorted(int(p.stem.split("-")[1]) for p in d.glob("rank-*.log") if p.stem.split("-")[1].isdigit()) \
                if pathcheck.is_dir(d) else []
        for r in ranks:
            self.readers.setdefault(r, LineReader(self.jd.rank_log(self.attempt, r)))

    def read(self, final: bool = False) -> list[str]:
        self._discover()
        new = {r: rd.read(final) for r, rd in self.readers.items()}
        if self.rank is not None:
            return new[self.rank]
        return interleave(new)


# ---------------------------------------------------------------------------------------- reading the run

def attempts_on_disk(jd: JobDir) -> list[int]:
    if not pathcheck.is_dir(jd.logs):
        return []
    return sorted(int(d.name.split("-")[1]) for d in jd.logs.glob("attempt-*") if d.name.split("-")[1].isdigit())


@dataclass(frozen=True)
class JobView:
    attempts: list[AttemptInfo]
    over: bool   # the job ended, or the run did, or its driver is gone: nothing more will be written


def job_view(rd: RunDir, job: str) -> JobView:
    j = Journal(rd.db, readonly=True)
    try:
        run = j.run()
        row = j.job(job)
        known = [AttemptInfo(a["n"], a["resumed_from"]) for a in j.attempts(job)]
    finally:
        j.close()
    from launcher import status   # rich comes with it: not needed for --help
    run_state = run["state"] if run else "failed"
    over = (row is not None and row["state"] in JOB_OVER) or run_state not in ("running", "pending") \
        or status.driver_state(rd, run_state) == "gone"
    on_disk = {a.n for a in known}
    known += [AttemptInfo(n) for n in attempts_on_disk(rd.job(job)) if n not in on_disk]
    return JobView(sorted(known, key=lambda a: a.n), over)


def _emit(lines: list[str], out: IO[str]) -> None:
    if lines:
        out.write("".join(line + "\n" for line in lines))
        out.flush()


def follow_job(rd: RunDir, job: str, attempt: int, rank: int | None, out: IO[str], poll_s: float = POLL_S) -> int:
    """Print from `attempt` on, switching to each new attempt with its banner, until the job is over."""
    cur = AttemptLogs(rd.job(job), attempt, rank)
    while True:
        view = job_view(rd, job)   # read before the files: lines written before `over` are all read below
        _emit(cur.read(), out)
        nxt = next_attempt(cur.attempt, view.attempts)
        if nxt is not None:
            _emit(cur.read(final=True), out)   # the old attempt's ranks are gone: its last bytes are final
            _emit([banner(nxt)], out)
            cur = AttemptLogs(rd.job(job), nxt.n, rank)
            continue
        if view.over:
            _emit(cur.read(final=True), out)
            return 0
        time.sleep(poll_s)


def follow_file(path: Path, out: IO[str], over: Callable[[], bool], poll_s: float = POLL_S) -> int:
    r = LineReader(path)
    while True:
        done = over()
        _emit(r.read(final=done), out)
        if done:
            return 0
        time.sleep(poll_s)


def run_over(rd: RunDir) -> bool:
    from launcher import status
    j = Journal(rd.db, readonly=True)
    try:
        run = j.run()
    finally:
        j.close()
    return run is None or status.is_over({"state": run["state"], "driver": status.driver_state(rd, run["state"])})


def wait_for_first_attempt(rd: RunDir, job: str, poll_s: float = POLL_S) -> list[int]:
    """The attempts on disk once the job has one; [] if it ends (skipped, killed) without any."""
    while True:
        over = job_view(rd, job).over
        found = attempts_on_disk(rd.job(job))
        if found or over:
            return found
        time.sleep(poll_s)


def agent_logs(jd: JobDir, attempt: int) -> list[Path]:
    d = jd.attempt_logs(attempt)
    return sorted(d.glob(AGENT_LOG_GLOB)) if pathcheck.is_dir(d) else []


# ---------------------------------------------------------------------------------------- entry point

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bin/logs", description="Print (or follow, across restarts) a job's rank logs, "
                                                            "the driver's log or the node agents' logs.")
    add_run_arguments(p, required=True)
    p.add_argument("job", nargs="?", help="the job (not with --driver)")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--all-ranks", action="store_true", help="every rank's lines, interleaved, each with [rank N]")
    p.add_argument("--attempt", type=int, help="default: the latest (with -f: where following starts)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing, through restarts (a banner at each new attempt), until the job ends")
    p.add_argument("--driver", action="store_true", help="the driver's log (driver.log)")
    p.add_argument("--agent", action="store_true",
                   help="the node agents' own output for the attempt (monitor errors, tracebacks)")
    return p


def main(argv: list[str] | None = None, out: IO[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    out = out or sys.stdout
    rd = open_run(args)
    if rd is None:
        return 2
    if args.driver:
        if args.job:
            p.error("--driver takes no JOB")
        if not rd.driver_log.exists():
            print(f"no driver log in {rd.root.name}", file=sys.stderr)
            return 2
        if args.follow:
            return follow_file(rd.driver_log, out, lambda: run_over(rd))
        _emit(LineReader(rd.driver_log).read(final=True), out)
        return 0
    if not args.job:
        p.error("JOB is required (or --driver)")
    jd = rd.job(args.job)
    attempts = attempts_on_disk(jd)
    if not attempts and args.follow and not args.agent and rd.db.exists():
        attempts = wait_for_first_attempt(rd, args.job)   # -f on a job still waiting for GPUs or upstream jobs
    if not attempts:
        print(f"no logs yet for {args.job} in {rd.root.name}", file=sys.stderr)
        return 2
    attempt = args.attempt or attempts[-1]
    if args.agent:
        files = agent_logs(jd, attempt)
        if not files:
            print(f"no agent logs for {args.job} attempt {attempt} in {rd.root.name}", file=sys.stderr)
            return 2
        for f in files:
            _emit([f"===== {f.name} (attempt {attempt}) =====", *LineReader(f).read(final=True)], out)
        return 0
    rank = None if args.all_ranks else args.rank
    if args.follow:
        return follow_job(rd, args.job, attempt, rank, out)
    if rank is not None and not jd.rank_log(attempt, rank).exists():
        print(f"no log of rank {rank} in attempt {attempt} of {args.job}", file=sys.stderr)
        return 2
    _emit(AttemptLogs(jd, attempt, rank).read(final=True), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
