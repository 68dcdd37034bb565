"""Requests to a running driver, as files in runs/<run>/control/ (bin/kill writes, the driver reads).

Files, not sockets: the driver may be detached on another terminal, and a request must survive
until it is read. The driver deletes a request once it acted on it and records it in the journal.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher.atomic import write_json


@dataclass(frozen=True)
class KillRequest:
    job: str | None          # None: the whole run
    force: bool
    time: float
    by: str = "bin/kill"


def control_dir(run_root: Path) -> Path:
    return run_root / "control"


def request_kill(run_root: Path, job: str | None, force: bool) -> Path:
    path = control_dir(run_root) / f"kill-{time.time():.6f}-{secrets.token_hex(3)}.json"
    write_json(path, asdict(KillRequest(job, force, time.time())))
    return path


def pending(run_root: Path) -> list[tuple[Path, KillRequest]]:
    out = []
    d = control_dir(run_root)
    if not d.is_dir():
        return out
    for p in sorted(d.glob("kill-*.json")):
        try:
            out.append((p, KillRequest(**json.loads(p.read_text()))))
        except (json.JSONDecodeError, TypeError, FileNotFoundError):
            continue
    return out


def withdraw(run_root: Path) -> list[Path]:
    """Remove every unread request (their driver was killed: nobody will act on them, and a driver
    that bin/resume starts later must not). Returns the files removed."""
    gone = []
    for path, _ in pending(run_root):
        path.unlink(missing_ok=True)
        gone.append(path)
    return gone
