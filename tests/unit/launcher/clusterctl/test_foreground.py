"""`bin/cluster up|join --foreground` without Ray: a stand-in `ray` that prints Ray's start-up line.
A stop signal stops it and everything carrying its marker; one that ends by itself has its
leftovers swept and its status returned; either way the host's record is gone afterwards."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from pathlib import Path

import psutil
import pytest

from launcher.clusterctl import foreground
from launcher.clusterctl.daemons import StartFailed, marked
from launcher.clusterctl.nodespec import NodeSpec, Role
from launcher.clusterctl.state import STATE_FILE, NodeRecord


def _fake_ray(tmp_path: Path, body: str) -> str:
    path = tmp_path / "ray"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _spec(tmp_path: Path) -> NodeSpec:
    return NodeSpec(Role.HEAD, "127.0.0.1", tmp_path / "ray-tmp", 0, None, None, 1, "0.1.0", "2.60.0")


def _token(tmp_path: Path) -> Path:
    token = tmp_path / "token"
    token.write_text("0" * 64)
    return token


def test_a_stop_signal_stops_it_and_its_children(tmp_path: Path) -> None:
    ray = _fake_ray(tmp_path, f'echo "$RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S" > {tmp_path}/drain\nsleep 60 &\n'
                              'echo "Ray runtime started."\nexec sleep 60')
    host = tmp_path / "host"
    seen: list[NodeRecord] = []

    def ready(rec: NodeRecord) -> None:
        rec.save(host)
        seen.append(rec)
        assert len(marked(rec.marker)) == 2   # the stand-in and its child
        os.kill(os.getpid(), signal.SIGTERM)   # what Slurm sends at the step's end

    before = signal.getsignal(signal.SIGTERM)
    out = foreground.run(_spec(tmp_path), _token(tmp_path), host, ray, 30, ready, poll_s=0.05)
    assert (out.signum, out.left, out.code) == (signal.SIGTERM, [], 0)
    assert marked(seen[0].marker) == []
    assert not (host / STATE_FILE).exists()
    assert signal.getsignal(signal.SIGTERM) is before   # the command's own handlers are back
    # Ray 2.60 would drain for 30 s on SIGTERM before stopping anything (longer than many a KillWait)
    assert (tmp_path / "drain").read_text().strip() == "0"


def test_ray_ending_by_itself_returns_its_status_and_sweeps(tmp_path: Path) -> None:
    go = tmp_path / "go"   # it dies once it was seen started, however slowly this machine polls
    ray = _fake_ray(tmp_path, f'sleep 60 &\necho "Ray runtime started."\n'
                              f'while [ ! -e {go} ]; do sleep 0.05; done\nexit 3')
    host = tmp_path / "host"
    seen: list[NodeRecord] = []

    def ready(rec: NodeRecord) -> None:
        seen.append(rec)
        go.touch()

    out = foreground.run(_spec(tmp_path), _token(tmp_path), host, ray, 30, ready, poll_s=0.05)
    assert (out.signum, out.ray_exit, out.code) == (None, 3, 3)
    assert marked(seen[0].marker) == []   # the child it left behind was swept
    assert not (host / STATE_FILE).exists()


def test_a_signal_during_start_up_stops_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"   # the stand-in's own PID: the test process has other children (Ray's)
    ray = _fake_ray(tmp_path, f"echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}\nexec sleep 60")
    stand_in: list[int] = []

    def interrupt_once_started() -> None:
        while not pid_file.exists():
            time.sleep(0.02)
        stand_in.append(int(pid_file.read_text()))
        os.kill(os.getpid(), signal.SIGINT)   # delivered to the main thread, inside foreground.run

    sender = threading.Thread(target=interrupt_once_started, daemon=True)
    sender.start()
    # it never prints Ray's start-up line: only the signal can end the wait before the 30 s limit,
    # and a time-out would raise with another message
    with pytest.raises(StartFailed, match="stopped by a signal"):
        foreground.run(_spec(tmp_path), _token(tmp_path), tmp_path / "host", ray, 30, lambda rec: None)
    sender.join(5)
    assert stand_in and not (psutil.pid_exists(stand_in[0])
                             and psutil.Process(stand_in[0]).status() != psutil.STATUS_ZOMBIE)


@pytest.mark.parametrize(("outcome", "code"), [
    (foreground.Outcome(signal.SIGTERM, None), 0),
    (foreground.Outcome(None, 1), 1),
    (foreground.Outcome(None, -9), 137),
    (foreground.Outcome(None, 0), 0),
])
def test_exit_status(outcome: foreground.Outcome, code: int) -> None:
    assert outcome.code == code


def test_only_the_first_signal_counts() -> None:
    stop = foreground.StopRequest()
    assert not stop.received()
    stop(signal.SIGTERM, None)
    stop(signal.SIGINT, None)
    assert stop.received() and stop.signum == signal.SIGTERM
