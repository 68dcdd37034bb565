"""Telling the kernel's OOM killer from another SIGKILL by the memory cgroup's counter."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from launcher import oomkill


def counter_file(tmp_path: Path, n: int) -> Path:
    f = tmp_path / "memory.oom_control"
    f.write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n")
    return f


def test_a_sigkill_that_moved_the_counter_was_the_oom_killer(tmp_path):
    f = counter_file(tmp_path, 3)
    before = oomkill.OomCounter(f, 3)
    counter_file(tmp_path, 4)
    why = oomkill.oom_killed(before, -signal.SIGKILL)
    assert why == f"killed by the kernel's OOM killer (host memory): oom_kill went 3 -> 4 in its memory cgroup ({tmp_path})"


def test_no_oom_verdict_without_sigkill_or_without_the_counter_moving(tmp_path):
    f = counter_file(tmp_path, 3)
    assert oomkill.oom_killed(oomkill.OomCounter(f, 3), -signal.SIGKILL) is None   # killed by someone else
    counter_file(tmp_path, 4)
    assert oomkill.oom_killed(oomkill.OomCounter(f, 3), 1) is None                 # a plain crash
    assert oomkill.oom_killed(None, -signal.SIGKILL) is None                       # nothing to compare with


def test_the_node_counter_stands_in_when_the_cgroup_one_did_not_move(tmp_path, monkeypatch):
    f = counter_file(tmp_path, 3)
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("pgfault 10\noom_kill 7\n")
    monkeypatch.setattr(oomkill, "VMSTAT", vmstat)
    before = oomkill.OomCounter(f, 3, 7)
    assert oomkill.oom_killed(before, -signal.SIGKILL) is None
    vmstat.write_text("pgfault 10\noom_kill 8\n")   # the rank had moved to a cgroup not looked at yet
    assert oomkill.oom_killed(before, -signal.SIGKILL) == \
        "killed by the kernel's OOM killer (host memory): oom_kill went 7 -> 8 on this node while it died"


def test_this_process_has_counters_to_read():
    c = oomkill.read(os.getpid())
    assert c is not None and c.node is not None and (c.source is None or c.source.is_file())


def test_a_reading_that_already_counts_the_processs_own_kill_is_not_kept():
    """The race a loaded machine showed: the OOM killer had counted the kill, the process was not
    reapable yet, so a poll saw it alive with the moved counter; that reading must not become the
    'before' its death is judged against."""
    cg = Path("/sys/fs/cgroup/memory/sl-x/memory.oom_control")
    start, moved = oomkill.OomCounter(cg, 0, 4), oomkill.OomCounter(cg, 1, 5)
    kept = oomkill.settled(None, start, None)              # at spawn
    kept = oomkill.settled(kept, start, None)               # first poll: nothing to agree with yet
    kept = oomkill.settled(kept, start, start)              # agreed: kept
    assert kept == start
    kept = oomkill.settled(kept, moved, start)              # the kill in progress, seen alive once
    assert kept == start                                     # ... judged against the old count: an OOM
    # a neighbour's OOM kill in its cgroup while it lives on: taken once two polls agree
    assert oomkill.settled(oomkill.settled(start, moved, start), moved, moved) == moved
    assert oomkill.settled(start, None, start) == start     # an unreadable look changes nothing
