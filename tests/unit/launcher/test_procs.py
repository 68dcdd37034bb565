"""Rank processes: spawned in their own session with a run marker, verified by PID + create time,
killed by process group with TERM -> grace -> KILL, stragglers swept one by one."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from launcher import procs
from launcher.procs import Owned, start_time

REPO = Path(__file__).resolve().parents[3]
SLEEP = "import time; time.sleep(30)"


@pytest.fixture
def run_id():
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def spawned(tmp_path, run_id):
    """Spawn helper; afterwards kills (verified by create time) whatever the test left alive."""
    started: list[Owned] = []

    def go(code: str, name: str = "rank", marker: str | None = None) -> tuple[object, Owned]:
        env = {**os.environ, "PYTHONPATH": str(REPO), procs.RUN_MARKER: marker or run_id}
        proc, owned = procs.spawn([sys.executable, "-c", textwrap.dedent(code)], env, tmp_path / f"{name}.log", tmp_path)
        started.append(owned)
        return proc, owned

    yield go
    for o in started:
        for d in procs.descendants(o, run_id):
            procs.kill_verified([d], run_id)
        procs.kill_verified([o], run_id)


def wait_for(path: Path, timeout: float = 10.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def owned_from(pid_line: str) -> Owned:
    pid = int(pid_line.split()[0])
    return Owned(pid, start_time(psutil.Process(pid)))


def test_spawn_own_session_marker_and_log(spawned, run_id, tmp_path):
    proc, owned = spawned("import os, time; print('hello from', os.getpid(), flush=True); time.sleep(30)")
    assert owned.pid == proc.pid
    p = owned.process(run_id)
    assert p is not None and p.pid == proc.pid
    assert os.getpgid(proc.pid) == proc.pid and os.getsid(proc.pid) == proc.pid   # own session and group
    assert p.environ()[procs.RUN_MARKER] == run_id
    deadline = time.time() + 10
    while "hello from" not in (tmp_path / "rank.log").read_text() and time.time() < deadline:
        time.sleep(0.02)
    assert (tmp_path / "rank.log").read_text().strip() == f"hello from {proc.pid}"


def test_identity_survives_a_stepped_wall_clock(spawned, run_id, monkeypatch):
    """NTP or a VM restore moves /proc/stat's btime, and with it psutil's create_time(); a live rank
    must still be recognised as ours (it once was not, and was never killed)."""
    proc, owned = spawned(SLEEP)
    monkeypatch.setattr(psutil, "boot_time", lambda: time.time() - 10_000.0)
    monkeypatch.setattr(psutil._psplatform, "boot_time", lambda: time.time() - 10_000.0)
    assert abs(psutil.Process(proc.pid).create_time() - owned.create_time) > 1.0   # the epoch view moved
    assert owned.process(run_id) is not None
    assert procs.kill_verified([owned], run_id, signal.SIGKILL) == [proc.pid]
    proc.wait(timeout=10)


def test_process_verifies_create_time(spawned, run_id):
    proc, owned = spawned(SLEEP)
    impostor = Owned(owned.pid, owned.create_time + 5.0)     # same PID, another create time: a recycled PID
    assert impostor.process(run_id) is None
    assert impostor.process() is None
    assert procs.kill_verified([impostor], run_id) == []
    assert procs.signal_group(impostor, signal.SIGKILL, run_id) is False
    assert procs.terminate_tree([impostor], [impostor], run_id, grace=0.1) == []
    time.sleep(0.1)
    assert proc.poll() is None                               # never killed
    assert owned.process(run_id) is not None


def test_process_verifies_run_marker(spawned, run_id):
    proc, owned = spawned(SLEEP)
    assert owned.process("another-run") is None
    assert owned.process(None) is not None                   # no marker check requested
    assert procs.signal_group(owned, signal.SIGKILL, "another-run") is False
    assert procs.kill_verified([owned], "another-run") == []
    time.sleep(0.1)
    assert proc.poll() is None


def test_process_of_exited_child_is_none(spawned, run_id):
    proc, owned = spawned("pass")
    proc.wait(timeout=10)
    assert owned.process(run_id) is None
    assert procs.wait_gone([owned], run_id, timeout=0.1) == []


def test_terminate_tree_kills_child_and_grandchild(spawned, run_id, tmp_path):
    proc, owned = spawned(f"""
        import subprocess, sys, time
        g = subprocess.Popen([sys.executable, "-c", {SLEEP!r}])
        open({str(tmp_path / 'gpid')!r}, "w").write(f"{{g.pid}}\\n")
        time.sleep(30)
    """)
    grand = owned_from(wait_for(tmp_path / "gpid"))
    assert grand.process(run_id) is not None                  # inherits the marker
    assert procs.descendants(owned, run_id) == [grand]
    alive = procs.terminate_tree([owned], [], run_id, grace=3.0)
    assert alive == []
    assert proc.wait(timeout=5) == -signal.SIGTERM            # SIGTERM was enough: no KILL after the grace
    assert grand.process(run_id) is None


def test_terminate_tree_sweeps_a_grandchild_that_left_the_group(spawned, run_id, tmp_path):
    proc, owned = spawned(f"""
        import signal, subprocess, sys, time
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
        g = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
        g.stdout.readline()
        open({str(tmp_path / 'gpid')!r}, "w").write(f"{{g.pid}}\\n")
        time.sleep(30)
    """)
    grand = owned_from(wait_for(tmp_path / "gpid"))
    assert os.getpgid(grand.pid) != owned.pid                  # a group signal cannot reach it
    alive = procs.terminate_tree([owned], [], run_id, grace=0.5)
    assert alive == []   # it ignored TERM: the sweep's KILL after the grace got it
    assert grand.process(run_id) is None


def test_sigterm_ignored_gets_sigkill_after_grace(spawned, run_id, tmp_path):
    proc, owned = spawned(f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(tmp_path / 'ready')!r}, "w").write("ready\\n")
        time.sleep(30)
    """)
    wait_for(tmp_path / "ready")
    alive = procs.terminate_tree([owned], [owned], run_id, grace=0.5)
    assert alive == []
    assert proc.wait(timeout=5) == -signal.SIGKILL   # TERM ignored: KILL after the grace, long before its sleep ends


def test_rank_dies_with_its_parent(tmp_path, run_id):
    """PR_SET_PDEATHSIG: a rank does not outlive the agent that spawned it."""
    import subprocess
    agent = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from launcher import procs
        env = {{**os.environ, procs.RUN_MARKER: {run_id!r}}}
        proc, owned = procs.spawn([sys.executable, "-c", {SLEEP!r}], env, Path({str(tmp_path / 'r.log')!r}), Path("."))
        print(owned.pid, owned.create_time, flush=True)
        os._exit(0)
    """)
    out = subprocess.run([sys.executable, "-c", agent], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=30, check=True).stdout.split()
    rank = Owned(int(out[0]), float(out[1]))
    try:
        assert procs.wait_gone([rank], run_id, timeout=5) == []
    finally:
        procs.kill_verified([rank], run_id)


def test_descendants_of_a_rank_exiting_while_they_are_listed_is_empty(spawned, run_id, monkeypatch):
    # The host polls the moment a rank exits (wait_exit): the process can vanish between the
    # verification and the walk of its children. That walk raising used to fail the attempt as lost.
    _, owned = spawned(SLEEP)

    def vanished(self, recursive=False):
        raise psutil.NoSuchProcess(self.pid)

    monkeypatch.setattr(psutil.Process, "children", vanished)
    assert procs.descendants(owned, run_id) == []
