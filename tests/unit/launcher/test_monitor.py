"""The monitor's NVML path against a pynvml stub, the host probe on real processes, and the CSV files."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import psutil
import pytest

from launcher import heartbeat, monitor
from launcher.layout import JobDir, RunDir
from launcher.memprobe import HostProbe, open_probe
from launcher.procs import start_time

MIB = 2**20


def fake_pynvml(script: list[dict[str, dict[str, Any]]]) -> types.ModuleType:
    """A stand-in for the pynvml module: the functions the probe calls, over scripted GPU states.

    `script[i]` is the state every query sees during sample i (advanced by the memory query, the
    first per GPU): {handle: {"mem": (used, total) MiB, "util": int | None (None: not supported),
    "procs": [(pid, MiB | None)]}}.
    """
    nv = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    nv.NVMLError, nv.NVMLError_NotSupported = NVMLError, NVMLError_NotSupported
    nv.calls = []
    nv.tick = -1
    uuids = {"0": "GPU-aaaa-0000", "GPU-bbbb-1111": "GPU-bbbb-1111"}

    def state(h: str) -> dict[str, Any]:
        return script[min(nv.tick, len(script) - 1)][h]

    def memory(h: str) -> Any:
        if h == "0":
            nv.tick += 1   # GPU "0" is queried first in every sample
        used, total = state(h)["mem"]
        return types.SimpleNamespace(used=int(used * MIB), total=int(total * MIB), free=int((total - used) * MIB))

    def util(h: str) -> Any:
        u = state(h)["util"]
        if u is None:
            raise NVMLError_NotSupported("Not Supported")
        return types.SimpleNamespace(gpu=u, memory=0)

    def procs(h: str) -> list[Any]:
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=None if m is None else int(m * MIB),
                                      gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
                for pid, m in state(h)["procs"]]

    def by_index(i: int) -> str:
        if i != 0:
            raise NVMLError("Invalid Argument")
        return "0"

    nv.nvmlInit = lambda: nv.calls.append("init")
    nv.nvmlShutdown = lambda: nv.calls.append("shutdown")
    nv.nvmlDeviceGetHandleByIndex = by_index
    nv.nvmlDeviceGetHandleByUUID = lambda u: u
    nv.nvmlDeviceGetUUID = lambda h: uuids[h]
    nv.nvmlDeviceGetMemoryInfo = memory
    nv.nvmlDeviceGetUtilizationRates = util
    nv.nvmlDeviceGetComputeRunningProcesses = procs
    return nv


# Two GPUs: "0" by index, the other by UUID (Ray gives UUIDs when a node was started with them).
# The second does not support utilisation. PID 102 (a child of rank 0) vanishes between samples
# 1 and 2 while the agent's list still holds it; 555 belongs to another user; 202's memory is
# unknown to the driver in sample 2, so that GPU's job total is empty rather than understated.
SCRIPT = [
    {"0": {"mem": (5000, 81920), "util": 87, "procs": [(101, 1000), (102, 200.5), (555, 300)]},
     "GPU-bbbb-1111": {"mem": (2560, 40960), "util": None, "procs": [(201, 2048)]}},
    {"0": {"mem": (5800, 81920), "util": 90, "procs": [(101, 1500), (555, 300)]},
     "GPU-bbbb-1111": {"mem": (2600, 40960), "util": None, "procs": [(201, 2048), (202, None)]}},
]

EXPECTED_SAMPLES = """\
time,node,host,backend,attempt,gpu_index,gpu_uuid,device_used_mib,device_total_mib,util_pct,job_mib,job_procs,step,job_mib_note
1000.000,node-a,host-a,nvml,2,0,GPU-aaaa-0000,5000.0,81920.0,87,1200.5,101:1000.0 102:200.5,10,
1000.000,node-a,host-a,nvml,2,GPU-bbbb-1111,GPU-bbbb-1111,2560.0,40960.0,,2048.0,201:2048.0,10,
1000.500,node-a,host-a,nvml,2,0,GPU-aaaa-0000,5800.0,81920.0,90,1500.0,101:1500.0,11,
1000.500,node-a,host-a,nvml,2,GPU-bbbb-1111,GPU-bbbb-1111,2600.0,40960.0,,,201:2048.0 202:,11,nvml_per_process_memory_not_reported
"""

EXPECTED_PEAKS = """\
node,host,backend,attempt,gpu_index,gpu_uuid,peak_mib,peak_time,peak_step,peak_device_used_mib,device_total_mib,\
torch_max_allocated_mib,torch_max_reserved_mib,samples,first_time,last_time,unknown_samples,unknown_note
node-a,host-a,nvml,2,0,GPU-aaaa-0000,1500.0,1000.500,11,5800.0,81920.0,900.0,1100.0,3,1000.000,1001.000,0,
node-a,host-a,nvml,2,GPU-bbbb-1111,GPU-bbbb-1111,2048.0,1000.000,10,2600.0,40960.0,1800.0,1950.0,3,1000.000,1001.000,2,\
nvml_per_process_memory_not_reported
"""


def _clock(times: list[float]) -> Any:
    it = iter(times)
    return lambda: next(it)


def _heartbeats(jd: JobDir, attempt: int) -> None:
    heartbeat.write(jd.heartbeat(0), heartbeat.Heartbeat(rank=0, step=11, total_steps=20, phase="training", attempt=attempt,
                                                         torch_max_allocated_mib=900.0, torch_max_reserved_mib=1100.0))
    heartbeat.write(jd.heartbeat(1), heartbeat.Heartbeat(rank=1, step=11, total_steps=20, phase="training", attempt=attempt,
                                                         torch_max_allocated_mib=1800.0, torch_max_reserved_mib=1950.0))


def test_nvml_path_writes_the_exact_rows(tmp_path: Path) -> None:
    jd = JobDir(tmp_path / "runs" / "r1" / "jobs" / "lisa")
    _heartbeats(jd, attempt=2)
    nv = fake_pynvml(SCRIPT)
    steps = iter([10, 11, 12])
    tree = [(101, 0.0), 102, 201, 202, 7777]   # 7777: a dead PID the agent still lists
    s = monitor.Sampler(jd.root, "node-a", ["0", "GPU-bbbb-1111"], lambda: tree, step=lambda: next(steps),
                        backend="nvml", ranks=[0, 1], attempt=2, host="host-a", metrics=False, nvml=nv,
                        clock=_clock([1000.0, 1000.5, 1001.0, 1001.0]), peaks_every=3600)
    assert s.backend == "nvml"
    s.sample_once()
    s.sample_once()
    assert jd.gpu_mem_csv.read_text() == EXPECTED_SAMPLES   # on disk before stop(): written per sample
    assert not jd.peak_mem_csv.exists()                      # peaks_every not reached yet
    s.stop()   # one last sample (the script repeats its last state at step 12), then the peaks
    assert jd.gpu_mem_csv.read_text().startswith(EXPECTED_SAMPLES)
    assert len(monitor.read_samples(jd.gpu_mem_csv)) == 6
    assert jd.peak_mem_csv.read_text() == EXPECTED_PEAKS
    assert nv.calls == ["init", "shutdown"]
    # The offline rebuild (agent died before writing peak_mem.csv) agrees, torch peaks aside.
    rebuilt = monitor.peaks_from_samples(monitor.read_samples(jd.gpu_mem_csv))
    assert [(p.gpu_index, p.peak_mib, p.peak_time, p.peak_step, p.samples) for p in rebuilt] == \
        [("0", 1500.0, 1000.5, 11, 3), ("GPU-bbbb-1111", 2048.0, 1000.0, 10, 3)]
    # Heartbeats of another attempt are not this sampler's.
    assert monitor._Heartbeats(jd, [0, 1], attempt=3).current() == {}


def test_nvml_unusable_gpu_gives_empty_values_and_auto_falls_back_to_host(tmp_path: Path) -> None:
    nv = fake_pynvml(SCRIPT)
    probe = open_probe("nvml", ["3"], nv)   # index 3 does not exist: the handle query fails
    (row,) = probe.sample(["3"], [101])
    assert (row.gpu_uuid, row.device_used_mib, row.util_pct, row.job_mib) == (None, None, None, None)

    def no_library() -> None:
        raise nv.NVMLError("NVML Shared Library Not Found")

    nv.nvmlInit = no_library
    assert open_probe("auto", ["0"], nv).name == "host"
    with pytest.raises(nv.NVMLError):
        open_probe("nvml", ["0"], nv)
    assert open_probe("auto", [], fake_pynvml(SCRIPT)).name == "host"   # no GPUs held: nothing for NVML
    with pytest.raises(ValueError):
        open_probe("nvidia-smi", ["0"])


@pytest.fixture
def sleepers() -> Any:
    procs: list[subprocess.Popen] = []

    def start(env: dict[str, str]) -> psutil.Process:
        # Until the child runs, it still has pytest's environment and memory: a sample taken then is
        # of another process (1 run in ~20 failed so), so the sleeper says when it is up.
        p = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                             env={**env, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline() == "up\n"
        return psutil.Process(p.pid)

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_host_probe_attributes_ranks_to_their_gpus_and_skips_vanished_and_recycled(sleepers: Any) -> None:
    r0 = sleepers({"CUDA_VISIBLE_DEVICES": "3,5", "LOCAL_RANK": "0"})
    r1 = sleepers({"CUDA_VISIBLE_DEVICES": "3,5", "LOCAL_RANK": "1"})
    other = sleepers({})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    probe = HostProbe()
    refs = [(r0.pid, start_time(r0)), r1.pid, (other.pid, start_time(other) - 100), gone.pid]
    by_gpu = {s.gpu_index: s for s in probe.sample(["3", "5"], refs)}
    assert set(by_gpu) == {"3", "5"}   # `other` carried a wrong create time: a recycled PID, skipped
    assert set(by_gpu["3"].procs) == {r0.pid} and set(by_gpu["5"].procs) == {r1.pid}
    rss0 = r0.memory_info().rss / MIB
    assert by_gpu["3"].job_mib == pytest.approx(rss0, rel=0.2)
    assert by_gpu["3"].device_used_mib is None and by_gpu["3"].util_pct is None
    # A process with no rank environment on a multi-GPU node is reported apart, not guessed.
    by_gpu = {s.gpu_index: s for s in probe.sample(["3", "5"], [(other.pid, start_time(other))])}
    assert set(by_gpu["host"].procs) == {other.pid} and by_gpu["3"].job_mib == 0.0
    assert set(probe._tracked) == {other.pid}   # bounded: only the live tree is remembered


def test_csv_is_readable_while_being_written(tmp_path: Path, sleepers: Any) -> None:
    me = sleepers({"CUDA_VISIBLE_DEVICES": "0", "LOCAL_RANK": "0"})
    jd = JobDir(tmp_path / "job")
    s = monitor.Sampler(jd.root, "n", ["0"], lambda: [me.pid], interval=0.01, backend="host", metrics=False,
                        peaks_every=0.05).start()
    seen, counts = 0, []
    deadline = time.time() + 1.5
    while time.time() < deadline:
        with open(jd.gpu_mem_csv, newline="") as f:    # the standard library's reader, mid-write
            rows = list(csv.DictReader(f))
        complete = monitor.read_samples(jd.gpu_mem_csv)
        assert all(r.job_mib is not None and r.job_mib > 1 for r in complete)
        assert len(complete) >= len(rows) - 1   # at most a torn last line differs
        counts.append(len(complete))
        seen += 1
        if jd.peak_mem_csv.exists():
            assert monitor.read_peaks(jd.peak_mem_csv)[0].samples > 0
    peaks = s.stop()
    assert counts == sorted(counts) and counts[-1] > 10 and seen > 10
    assert len(monitor.read_samples(jd.gpu_mem_csv)) == s.samples
    assert peaks[0].samples == s.samples and s.errors == 0
    assert not s._thread.is_alive()


def test_run_peaks_gather_jobs_and_rebuild_a_missing_peak_file(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    rows = {"a": [(1.0, 100.0, 1), (2.0, 300.0, 2), (3.0, 200.0, 3)], "b": [(1.5, 50.0, None)]}
    for job, samples in rows.items():
        out = monitor.CsvAppender(rd.job(job).gpu_mem_csv, monitor.SAMPLE_COLUMNS)
        out.append([monitor.SampleRow(t, "n1", "h", "host", 1, "0", None, None, None, None, mib, {}, step).to_csv()
                    for t, mib, step in samples])
        out.close()
    monitor.write_peaks(rd.job("b").peak_mem_csv, [monitor.PeakRow("n1", "h", "host", 1, "0", peak_mib=50.0,
                                                                   torch_max_reserved_mib=40.0)])
    path = monitor.write_run_peaks(rd)
    got = list(csv.DictReader(path.open()))
    assert [(r["job"], r["peak_mib"], r["peak_step"]) for r in got] == [("a", "300.0", "2"), ("b", "50.0", "")]
    assert got[1]["torch_max_reserved_mib"] == "40.0"   # b's peak file is current: used as written
    assert monitor.build_run_peaks({}) == [monitor.RUN_PEAK_COLUMNS]


def test_a_failing_process_list_never_stops_the_sampler(tmp_path: Path) -> None:
    calls = {"n": 0}

    def pids() -> list[int]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("dictionary changed size during iteration")
        return []

    s = monitor.Sampler(tmp_path / "job", "n", ["0"], pids, interval=0.01, backend="host", metrics=False).start()
    time.sleep(0.3)
    s.stop()
    assert s.errors == 1 and s.samples >= 5


def test_real_ray_gauges_are_set_without_errors(tmp_path: Path) -> None:
    s = monitor.Sampler(tmp_path / "job", "n", ["0"], lambda: [], backend="host", metrics=True, run="r", job="j")
    assert s._gauges is not None   # ray.util.metrics is importable here; outside a Ray worker set() records locally
    s.sample_once()
    assert s.stop()[0].peak_mib == 0.0 and s.errors == 0
    assert s.stop() == s.tracker.peaks()   # idempotent


def test_a_rank_that_lived_between_two_samples_is_measured_by_its_heartbeat(tmp_path: Path) -> None:
    """The host backend folds each rank's own peak RSS (VmHWM, from its heartbeat) in as a floor: a
    rank that came and went between two samples still has its peak (CI once saw 1.1 MiB, the
    size of a process caught in exec)."""
    jd = JobDir(tmp_path / "job")
    s = monitor.Sampler(jd.root, "n", ["0", "1"], lambda: [], backend="host", metrics=False, ranks=[4, 5], attempt=2)
    s.sample_once()   # the ranks are not there (yet, or any more): nothing measured
    for rank, hwm in ((4, 7.5), (5, 42.0)):
        heartbeat.write(jd.heartbeat(rank), heartbeat.Heartbeat(rank=rank, step=3, total_steps=3, phase="done",
                                                                attempt=2, rss_hwm_mib=hwm))
    heartbeat.write(jd.heartbeat(6), heartbeat.Heartbeat(rank=6, step=3, total_steps=3, phase="done", attempt=2,
                                                         rss_hwm_mib=900.0))   # not a rank of this agent
    peaks = {p.gpu_index: p.peak_mib for p in s.stop()}   # stop() takes the last sample
    assert peaks == {"0": 7.5, "1": 42.0}
    assert {p.gpu_index: p.peak_mib for p in monitor.read_peaks(jd.peak_mem_csv)} == peaks


def test_own_peak_rss_is_the_process_after_its_exec_not_its_forking_parent() -> None:
    code = "from launcher.heartbeat import own_peak_rss_mib; print(own_peak_rss_mib())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3])
    child = float(out.stdout)
    mine = heartbeat.own_peak_rss_mib()
    assert 5 < child < 100 and mine is not None and mine >= psutil.Process().memory_info().rss / 2**20 - 1
