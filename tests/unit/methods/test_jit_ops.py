"""Stale torch-extension batons: a lock file nobody holds open is stale; one a live process holds is not."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from methods.jit_ops import BATON, holders, stale_batons


def _hold(path) -> subprocess.Popen:
    """A process that opens `path` the way torch's FileBaton does and keeps it open."""
    code = f"import os, sys, time; fd = os.open({str(path)!r}, os.O_CREAT | os.O_EXCL); print('held', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_holders_finds_the_process_with_the_file_open(tmp_path):
    baton = tmp_path / BATON
    p = _hold(baton)
    try:
        assert holders(baton) == [p.pid]
    finally:
        p.kill()
        p.wait()
    assert holders(baton) == [] and baton.exists()   # killed mid-build: the file stays, nobody holds it
    assert holders(tmp_path / "absent") == []


def test_only_unheld_batons_are_stale(tmp_path):
    dead, live, free = tmp_path / "op_dead", tmp_path / "op_live", tmp_path / "op_free"
    for d in (dead, live, free):
        d.mkdir()
    (dead / BATON).write_text("")
    p = _hold(live / BATON)
    try:
        assert stale_batons(tmp_path, recheck_after=0.05) == [dead / BATON]
    finally:
        p.kill()
        p.wait()
    assert stale_batons(free, recheck_after=0.05) == []


def test_a_baton_released_between_the_two_looks_is_not_stale(tmp_path):
    """A holder between close() and remove() looks unheld once; the second look finds the file gone."""
    op = tmp_path / "op"
    op.mkdir()
    (op / BATON).write_text("")
    remover = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(0.3); os.remove({str(op / BATON)!r})"])
    start = time.monotonic()
    assert stale_batons(tmp_path, recheck_after=1.0) == []
    assert time.monotonic() - start >= 1.0 and remover.wait() == 0
    assert not os.path.exists(op / BATON)
