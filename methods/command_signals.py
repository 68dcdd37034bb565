"""What a script that knows nothing of the launcher shows of its progress, kept pure where it can be.

`ProgressParser` reads its output (the HF Trainer's log dicts and progress bar, tqdm's `N/M`,
`step N[/M]`, or the plan's own regex); `Activity` keeps, per signal, when it last moved. The
command wrapper (methods/command.py) samples the readings once a second and turns them into the
heartbeat the supervisor already judges: a hang is declared only when every configured signal
stayed flat for the phase's timeout.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

AUTO = (
    re.compile(r"(?P<step>\d+)/(?P<total>\d+) \[[\d:]+<"),                 # tqdm / the Trainer's bar: 45/100 [00:10<
    re.compile(r"\bstep[\s:=#]+(?P<step>\d+)(?:\s*(?:/|of)\s*(?P<total>\d+))?", re.I),   # step 12, step: 12/100
    re.compile(r"['\"]loss['\"]:\s*['\"]?(?P<loss>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"),  # {'loss': 1.23, ...}
)


# A bar is steps once it has moved this often: the weights loading prints 0/39 then 39/39, and a
# rank whose only bar that was (the Trainer's ranks other than 0) reports no steps at all.
MIN_MOVES = 3


@dataclass
class _Bar:
    step: int = 0
    updates: int = 0   # times its step changed: the training's bar moves every step, a loading bar twice
    need: int = 1      # updates before it counts as steps


@dataclass
class ProgressParser:
    """The step, total and loss a script's output gives. Scripts print several bars (the weights
    loading 21/21, a dataset map, the training, each evaluation); the one counted as steps is the
    first to move MIN_MOVES times, until it finishes (an evaluation in between is activity, not
    steps); then (and for `step N` lines, which have no end) the one that moved most often, so a
    last evaluation does not take the training's place. A tie goes to the bar seen first."""
    pattern: str = "auto"
    step: int = 0
    total: int | None = None
    loss: float | None = None
    units: int = 0          # lines that matched anything: progress inside a phase
    bars: dict[int | None, _Bar] = field(default_factory=dict)   # total -> that bar (None: "step N" lines)

    def __post_init__(self) -> None:
        self.regexes = () if self.pattern == "off" else AUTO if self.pattern == "auto" else (re.compile(self.pattern),)

    def feed(self, line: str) -> None:
        for rx in self.regexes:
            for m in rx.finditer(line):
                g = {k: v for k, v in m.groupdict().items() if v is not None}
                self.units += 1
                if "loss" in g:
                    try:
                        self.loss = float(g["loss"])
                    except ValueError:
                        pass
                if "step" in g:   # a bar must move a few times; "step 12" or the plan's regex says it outright
                    self._bar(int(g["total"]) if "total" in g else None, int(g["step"]),
                              MIN_MOVES if rx is AUTO[0] else 1)

    @property
    def bars_moving(self) -> bool:
        """Whether `step` is the script's own count (not a rank's that prints none)."""
        return any(b.updates >= b.need for b in self.bars.values())

    def _bar(self, total: int | None, step: int, need: int) -> None:
        bar = self.bars.get(total)
        if bar is None:
            bar = self.bars[total] = _Bar(step, 1, need)
        elif step != bar.step:
            bar.step, bar.updates = max(bar.step, step), bar.updates + 1
        cur = self.bars.get(self.total) if self.total is not None else None
        if cur is None or cur.updates < cur.need or cur.step >= self.total:   # type: ignore[operator]
            moving = [kv for kv in self.bars.items() if kv[1].updates >= kv[1].need]
            if moving:   # max() keeps the first of equals: dicts iterate in insertion order
                self.total, cur = max(moving, key=lambda kv: kv[1].updates)
        if cur is not None and cur.updates >= cur.need:
            self.step = cur.step


def lines(buffer: str) -> tuple[list[str], str]:
    """Whole lines (a progress bar redraws with \\r, so that ends one too) and the unfinished rest."""
    parts = re.split(r"[\r\n]", buffer)
    return parts[:-1], parts[-1]


# What the launcher itself writes in a job directory (logs, heartbeats, memory samples, pointers):
# never the script's activity. Its output is its own signal.
LAUNCHER_ENTRIES = frozenset({"logs", "heartbeat", "checkpoints", "seen", "gpu_mem.csv", "peak_mem.csv", "result.json",
                              "faults.jsonl"})


def files_fingerprint(job_dir: Path, limit: int = 5000) -> tuple[int, int, int]:
    """(files, bytes, newest mtime) of what the script wrote under its job directory, at most
    `limit` files: a file growing, appearing or being rewritten moves it."""
    n = size = newest = 0
    try:
        top = [e for e in os.scandir(job_dir)
               if e.name not in LAUNCHER_ENTRIES and not (e.name.startswith("job-") and e.name.endswith(".json"))]
    except OSError:
        return n, size, newest
    for entry in top:
        walk = os.walk(entry.path) if entry.is_dir(follow_symlinks=False) else [(job_dir, [], [entry.name])]
        for dirpath, _dirs, names in walk:
            for name in names:
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:
                    continue   # written and removed between the listing and the stat
                n, size, newest = n + 1, size + st.st_size, max(newest, st.st_mtime_ns)
                if n >= limit:
                    return n, size, newest
    return n, size, newest


@dataclass
class Activity:
    """Per signal, its last reading and when it last moved. A signal that cannot be read here (no
    GPU) reads None and never moves: it never keeps a hang alive, and never causes one alone."""
    signals: tuple[str, ...]
    started: float
    cpu_floor: float = 0.02
    readings: dict[str, object] = field(default_factory=dict)
    moved_at: dict[str, float] = field(default_factory=dict)
    ticks: int = 0          # samples in which some configured signal moved: the heartbeat's progress units

    def update(self, now: float, readings: dict[str, object], dt: float) -> bool:
        moved = False
        for name in self.signals:
            new, old = readings.get(name), self.readings.get(name)
            if new is None:
                continue
            if name == "cpu":   # CPU time always creeps; idle below the floor
                changed = old is None or float(new) - float(old) >= self.cpu_floor * dt  # type: ignore[arg-type]
            else:
                changed = new != old
            if changed:
                self.moved_at[name] = now
                moved = True
            self.readings[name] = new
        if moved:
            self.ticks += 1
        return moved

    def idle(self, now: float) -> dict[str, float]:
        """Seconds since each signal last moved (since the start for one that never did)."""
        return {s: round(now - self.moved_at.get(s, self.started), 1) for s in self.signals}
