"""DriverInfo from another host: its PID means nothing there; the driver lock on the shared run
directory says whether it lives, and signalling it is refused with where to go instead."""

from __future__ import annotations

import subprocess
import sys

import pytest

from launcher import driver_lock
from launcher.lifecycle import DriverInfo, ElsewhereError

HOLD = "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"


def test_a_driver_on_another_host_is_alive_while_it_holds_the_lock(tmp_path) -> None:
    lock = tmp_path / "driver.lock"
    lock.touch()
    far = DriverInfo(pid=1, create_time=0.0, host="some-other-host", lock=lock)
    assert not far.alive()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert far.alive()
    finally:
        holder.kill()
        holder.wait()
    assert not far.alive()


def test_bin_resume_holding_the_lock_itself_does_not_see_the_old_driver_alive(tmp_path) -> None:
    lock = tmp_path / "driver.lock"
    driver_lock.acquire(lock)
    try:
        assert not DriverInfo(pid=1, create_time=0.0, host="some-other-host", lock=lock).alive()
    finally:
        driver_lock.release(lock)


def test_signalling_a_driver_on_another_host_is_refused(tmp_path) -> None:
    with pytest.raises(ElsewhereError, match="runs on some-other-host"):
        DriverInfo(pid=1, create_time=0.0, host="some-other-host").signal(9)
