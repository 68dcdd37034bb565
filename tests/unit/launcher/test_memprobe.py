"""Attributing NVML's processes to the job: PID namespaces (NSpid), and "unknown" instead of 0 when
no process of the job is visible (NVML in a container lists host PIDs). NVML is the pynvml stub of
test_monitor (there is no GPU here); the processes and /proc are real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import memprobe, monitor
from launcher.layout import JobDir
from launcher.memprobe import (IDLE_SLACK_MIB, UNKNOWN_FOREIGN_PIDS, UNKNOWN_NO_PROCESSES, UNKNOWN_PROCESS_MEMORY,
                               UNKNOWN_PROCESS_QUERY, NvmlProbe, attribute, parse_nspid, pid_aliases, pid_visible)
from tests.unit.launcher.test_monitor import fake_pynvml

NEVER_A_PID = 2**22 + 1   # above Linux's PID_MAX_LIMIT: no namespace here can have it (a host PID, as seen from a container)


def visible(pid: int) -> bool:
    return pid_visible(pid)


def test_attribution_decisions() -> None:
    me, other = os.getpid(), os.getppid()
    aliases = {me: me, 4242: me}   # 4242: the same process in an inner namespace
    # Found (by either PID; two contexts of one process add up).
    a = attribute([(4242, 100.0), (me, 50.0), (other, 7.0)], aliases, visible, 9000.0, 500.0)
    assert (a.job_mib, a.procs, a.note) == (150.0, {me: 150.0}, "")
    # Found, but the driver does not say how much: unknown, not understated.
    a = attribute([(me, None)], aliases, visible, 9000.0, 500.0)
    assert (a.job_mib, a.note) == (None, UNKNOWN_PROCESS_MEMORY)
    # Not found, every listed process is someone else's that we can see: the job really holds 0 here.
    assert attribute([(other, 3000.0)], aliases, visible, 3500.0, 500.0).job_mib == 0.0
    # Not found, and NVML lists PIDs this namespace cannot see (a container): unknown.
    a = attribute([(NEVER_A_PID, 3000.0)], aliases, visible, 3500.0, 500.0)
    assert (a.job_mib, a.procs, a.note) == (None, {}, UNKNOWN_FOREIGN_PIDS)
    # NVML lists nothing: 0 at the idle level, unknown once the device's memory is in use.
    assert attribute([], aliases, visible, 500.0 + IDLE_SLACK_MIB, 500.0).job_mib == 0.0
    a = attribute([], aliases, visible, 501.0 + IDLE_SLACK_MIB, 500.0)
    assert (a.job_mib, a.note) == (None, UNKNOWN_NO_PROCESSES)
    assert attribute(None, aliases, visible, 3500.0, 500.0).note == UNKNOWN_PROCESS_QUERY


def test_nspid_parsing_and_this_process() -> None:
    assert parse_nspid("Name:\tpython\nNSpid:\t31337\t12\t1\nNSsid:\t1\n") == (31337, 12, 1)
    assert parse_nspid("Name:\tpython\n") == ()
    assert pid_aliases(os.getpid())[0] == os.getpid()
    assert pid_aliases(NEVER_A_PID) == (NEVER_A_PID,)   # gone: the PID itself
    assert pid_visible(os.getpid()) and not pid_visible(NEVER_A_PID)


def test_a_rank_in_an_inner_pid_namespace_is_matched_by_its_nspid() -> None:
    """A real process in a nested PID namespace (unshare): the stub NVML lists it under its inner PID
    (what a driver reporting the process's own namespace gives); the probe finds it by NSpid."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    p = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "30"], stderr=subprocess.PIPE)
    try:
        sleeper, deadline = None, time.time() + 5
        while sleeper is None and time.time() < deadline:
            kids = Path(f"/proc/{p.pid}/task/{p.pid}/children")
            pids = kids.read_text().split() if kids.exists() else []
            sleeper = int(pids[0]) if pids else None
            if p.poll() is not None:
                pytest.skip(f"unshare --pid refused here: {p.stderr.read().decode().strip()}")
            time.sleep(0.05)
        assert sleeper is not None
        ns = pid_aliases(sleeper)
        assert len(ns) == 2 and ns[0] == sleeper, ns
        inner = ns[1]
        nv = fake_pynvml([{"0": {"mem": (4000, 81920), "util": 50, "procs": [(inner, 3000)]}}])
        (s,) = NvmlProbe(["0"], nv).sample(["0"], [sleeper])
        assert (s.job_mib, s.procs, s.note) == (3000.0, {sleeper: 3000.0}, "")
    finally:
        p.kill()
        p.wait()


def test_container_view_records_unknown_not_zero(tmp_path: Path) -> None:
    """NVML shows only host PIDs: the job's memory is unknown in gpu_mem.csv and peak_mem.csv (with
    the reason), peak_mib stays empty, and the report says "unknown" instead of 0."""
    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        script = [{"0": {"mem": (600, 81920), "util": 0, "procs": []}},                       # before CUDA init
                  {"0": {"mem": (30600, 81920), "util": 90, "procs": [(NEVER_A_PID, 30000)]}},  # host PID
                  {"0": {"mem": (30600, 81920), "util": 90, "procs": []}}]                     # lists none
        jd = JobDir(tmp_path / "runs" / "r1" / "jobs" / "lisa")
        s = monitor.Sampler(jd.root, "node-a", ["0"], lambda: [rank.pid], backend="nvml", ranks=[0], host="h",
                            metrics=False, nvml=fake_pynvml(script), peaks_every=3600)
        rows = [s.sample_once()[0] for _ in range(3)]
        (peak,) = s.stop()
    finally:
        rank.kill()
        rank.wait()
    assert [(r.job_mib, r.job_mib_note) for r in rows] == [
        (0.0, ""), (None, UNKNOWN_FOREIGN_PIDS), (None, UNKNOWN_NO_PROCESSES)]
    on_disk = monitor.read_samples(jd.gpu_mem_csv)
    assert [r.job_mib_note for r in on_disk[:3]] == ["", UNKNOWN_FOREIGN_PIDS, UNKNOWN_NO_PROCESSES]
    assert on_disk[1].job_mib is None and on_disk[1].device_used_mib == 30600.0
    (read_back,) = monitor.read_peaks(jd.peak_mem_csv)
    assert read_back.peak_mib == 0.0 and read_back.unknown_samples == 3 and read_back.unknown_note == UNKNOWN_NO_PROCESSES
    assert (peak.peak_mib, peak.unknown_samples) == (0.0, 3)
    assert monitor.peak_text(read_back) == "unknown (3 of 4 samples: nvml_lists_no_process_while_memory_used)"
    never = monitor.PeakRow("n", "h", "nvml", 1, "0", unknown_samples=2, samples=2, unknown_note=UNKNOWN_FOREIGN_PIDS)
    assert monitor.peak_text(never) == "unknown (2 of 2 samples: nvml_pids_not_in_this_namespace)"
    assert memprobe.UNKNOWN_FOREIGN_PIDS in monitor.peak_text(never)


def test_the_report_says_unknown_where_no_sample_was_attributed() -> None:
    from launcher.report import JobInfo, Report, markdown
    never = monitor.PeakRow("node-a", "h", "nvml", 1, "0", samples=5, unknown_samples=5, peak_device_used_mib=30600.0,
                            unknown_note=UNKNOWN_FOREIGN_PIDS)
    j = JobInfo(name="lisa", method="lisa", state="succeeded", attempts=[], needs=[], params={}, peaks=[never])
    md = markdown(Report(run="r1", dir="/runs/r1", state="succeeded", plan="p.yaml", created=0.0, ended=10.0,
                         jobs=[j], results=[]))
    assert "| lisa | 1 | h | 0 | unknown (5 of 5 samples: nvml_pids_not_in_this_namespace) |" in md
    assert "unknown (5 of 5 samples: nvml_pids_not_in_this_namespace) (GPU 0)" in md   # the jobs table
    assert "| 0.0 |" not in md
