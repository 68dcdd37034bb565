"""Telling the kernel's OOM killer from any other SIGKILL: the memory cgroup's `oom_kill` counter.

A rank killed for host memory leaves no line in its log (exit -9, nothing else), so its log cannot
say OOM. The agent reads the counter of the rank's memory cgroup while the rank lives and again
once it died: a kill that raised it was the OOM killer. The node-wide counter in /proc/vmstat is
read beside it, for a rank whose cgroup has no counter, or that changed cgroups after the last
look (then another process's OOM kill could coincide: the detail says which counter moved).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

VMSTAT = Path("/proc/vmstat")


@dataclass(frozen=True)
class OomCounter:
    source: Path | None   # the rank's memory cgroup counter file, where there is one
    count: int
    node: int | None = None   # /proc/vmstat's oom_kill at the same time


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of the cgroup file systems."""
    out = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) >= 5 and len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
                out.append((fields[4], rfields[0], set(rfields[2].split(","))))
    except OSError:
        pass
    return out


def counter_files(pid: int) -> list[Path]:
    """The memory cgroup counter files for `pid`, most specific first."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    found: list[Path] = []
    mounts = _mounts()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":      # cgroup v2: memory.events has `oom_kill N`
            bases = [Path(m) for m, kind, _ in mounts if kind == "cgroup2"]
            name = "memory.events"
        elif "memory" in controllers.split(","):   # v1: memory.oom_control has `oom_kill N`
            bases = [Path(m) for m, kind, opts in mounts if kind == "cgroup" and "memory" in opts]
            name = "memory.oom_control"
        else:
            continue
        for base in bases:
            # The path is relative to the cgroup namespace's root; a mount of a namespace's own
            # cgroup shows it at the mount point itself.
            found += [p for p in (base / rel / name, base / name) if p.is_file()]
    return found


def _count(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def read(pid: int) -> OomCounter | None:
    """The counters that would move if `pid` were OOM-killed now."""
    node = _count(VMSTAT)
    for path in counter_files(pid):
        n = _count(path)
        if n is not None:
            return OomCounter(path, n, node)
    return OomCounter(None, 0, node) if node is not None else None


def settled(kept: OomCounter | None, new: OomCounter | None, last: OomCounter | None) -> OomCounter | None:
    """The counter a later death is judged against, after a look at a live process that read `new`
    (`last`: the look before). The kernel counts an OOM kill before the killed process can be
    reaped, so a reading taken in between already holds its own kill: a new reading replaces the
    kept one only once two looks in a row agree while the process still lives (a kill in progress
    would have ended it by the second)."""
    if kept is None:
        return new
    return new if new is not None and new == last else kept


def oom_killed(before: OomCounter | None, exit_code: int | None) -> str | None:
    """Why a rank that died of SIGKILL died, if the OOM killer did it; None otherwise."""
    if before is None or exit_code != -signal.SIGKILL:
        return None
    now = _count(before.source) if before.source is not None else None
    if now is not None and now > before.count:
        return (f"killed by the kernel's OOM killer (host memory): oom_kill went {before.count} -> {now} "
                f"in its memory cgroup ({before.source.parent})")
    node = _count(VMSTAT)
    if before.node is not None and node is not None and node > before.node:
        return (f"killed by the kernel's OOM killer (host memory): oom_kill went {before.node} -> {node} "
                "on this node while it died")
    return None


def join_limited_cgroup(limit_bytes: int) -> Path:
    """Move this process into a new cgroup-v1/v2 memory cgroup with a hard limit (needs root).
    For the synthetic method's host-OOM fault: the kernel's real OOM killer, not a simulation."""
    mounts = _mounts()
    for mount, kind, opts in mounts:
        if kind == "cgroup" and "memory" in opts:
            cg = Path(mount) / f"sl-synthetic-oom-{os.getpid()}"
            cg.mkdir(exist_ok=True)
            (cg / "memory.limit_in_bytes").write_text(str(limit_bytes))
            (cg / "cgroup.procs").write_text(str(os.getpid()))
            return cg
    for mount, kind, _ in mounts:
        if kind == "cgroup2" and "memory" in (Path(mount) / "cgroup.controllers").read_text().split():
            cg = Path(mount) / f"sl-synthetic-oom-{os.getpid()}"
            cg.mkdir(exist_ok=True)
            (cg / "memory.max").write_text(str(limit_bytes))
            (cg / "cgroup.procs").write_text(str(os.getpid()))
            return cg
    raise RuntimeError("no writable memory cgroup controller (the host-OOM fault needs root and cgroups)")
