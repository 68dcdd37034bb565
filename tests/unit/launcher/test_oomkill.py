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


def test_this_process_has_a_counter_to_read():
    c = oomkill.read(os.getpid())
    assert c is not None and c.count >= 0 and c.source.is_file()
