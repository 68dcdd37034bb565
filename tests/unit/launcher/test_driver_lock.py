"""One driver per run: the lock refuses a second holder and is released when its holder dies."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from launcher import driver_lock
from tests.helpers import REPO

HOLD = "import sys, time; from launcher import driver_lock; driver_lock.acquire(__import__('pathlib').Path(sys.argv[1])); " \
       "print('held', flush=True); time.sleep(60)"


def test_a_second_driver_is_refused_until_the_first_dies(tmp_path):
    lock = tmp_path / "driver.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert driver_lock.is_held(lock)
        with pytest.raises(driver_lock.RunLocked, match=f"another driver holds .*driver.lock \\(pid {holder.pid}\\)"):
            driver_lock.acquire(lock)
    finally:
        holder.send_signal(signal.SIGKILL)   # however the driver dies, the kernel drops its lock
        holder.wait()
    assert not driver_lock.is_held(lock)
    driver_lock.acquire(lock)
    try:
        assert driver_lock.is_held(lock) and lock.read_text().startswith("pid ")
        driver_lock.acquire(lock)   # this process again: already its own
    finally:
        driver_lock.release(lock)
    assert not driver_lock.is_held(lock)
