"""What `--json` prints for `sl launch --detach`, `sl resume` and `sl kill`: typed, stable keys.

Keys are only ever added, never renamed (scripts parse them like `sl status --json`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Detached:
    """A driver started in its own session: `launch --detach`, `resume --detach`."""
    action: str          # "launch" or "resume"
    run: str
    dir: str
    driver_pid: int
    log: str             # the driver's stdout/stderr (runs/<run>/driver.out)
    runs_dir: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass(frozen=True)
class KillResult:
    """outcome: "killed" (the driver confirmed), "driver_killed" (--force SIGKILLed an unanswering
    driver), "swept" (no driver: this command swept and recorded), "unanswered" (gave up waiting)."""
    run: str
    job: str | None
    force: bool
    outcome: str
    driver_pid: int | None
    swept_pids: list[int] = field(default_factory=list)
    exit_code: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)
