"""GPU memory monitor: per-job memory timelines and peak-memory CSVs, sampled by the node agent.

A `Sampler` runs in a daemon thread of the NodeAgent actor, never in a training process: a slow
or hung NVML call stalls only this thread (the agent keeps answering polls), and the ranks pay
nothing. Memory use is bounded: rows go straight to disk; what stays in memory is one peak
record per GPU and a cache of the live processes.

API (what the agent wires):

    s = Sampler(job_dir, node, gpus, pids, step=None, interval=0.5, backend="auto",
                ranks=[0, 1], attempt=1, run="run-id", job="lisa")
    s.start()          # samples at once, then every `interval` s
    ...
    peaks = s.stop()   # one last sample (shows the release), writes peak_mem.csv, zeroes gauges

- `gpus`: the CUDA_VISIBLE_DEVICES ids the agent holds (Ray's accelerator ids: NVML indices
  when ranks run with CUDA_DEVICE_ORDER=PCI_BUS_ID, or UUIDs).
- `pids()`: the job's process tree on this node, as PIDs or (PID, create time) pairs; called
  once per sample from the sampler thread. Dead or vanished PIDs are fine.
- `step()`: the job's current step, or None; default: the highest step in this node's heartbeats.
- `ranks`: the global ranks of this node, in local-rank order: rank `ranks[i]` uses `gpus[i]`;
  their heartbeats give the torch peaks (max_memory_allocated / reserved) per GPU.
- `backend`: "nvml", "host" (psutil RSS of the processes), or "auto" (NVML if it initialises).

`attach(agent)` / `detach(agent)` do all of that for a NodeAgent and never raise.

Files (paths in launcher.layout):
- jobs/<job>/gpu_mem.csv: one row per GPU per sample (SAMPLE_COLUMNS), appended with one
  O_APPEND write per sample, so the file is readable while the run is live and complete up to
  the last sample after a crash. Several nodes of one job append to the same file.
- jobs/<job>/peak_mem.csv: one row per (node, attempt, GPU) (PEAK_COLUMNS), replaced atomically
  every `peaks_every` s while a peak moved, and at stop().
- <run>/peak_memory.csv: all jobs' peak rows (`write_run_peaks`), rebuilt from the job files.

Ray metrics (ray.util.metrics gauges, in Prometheus as ray_sl_job_gpu_memory_mib and
ray_sl_job_gpu_memory_peak_mib) tagged run/job/node/gpu: current and peak MiB of the job on
each GPU (the job's processes; device used where per-process memory is unknown).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from launcher import atomic, heartbeat
from launcher.layout import JobDir, RunDir
from launcher.memprobe import GpuSample, ProcRef, open_probe

log = logging.getLogger("launcher.monitor")
DEFAULT_INTERVAL = 0.5   # s: catches a one-second spike with two samples
SAMPLE_COLUMNS = ["time", "node", "host", "backend", "attempt", "gpu_index", "gpu_uuid", "device_used_mib",
                  "device_total_mib", "util_pct", "job_mib", "job_procs", "step"]


def _f(v: float | None, digits: int = 1) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _num(s: str | None) -> float | None:
    try:
        return float(s) if s not in (None, "") else None
    except ValueError:
        return None


@dataclass(frozen=True)
class SampleRow:
    """One row of gpu_mem.csv: one GPU at one instant."""

    time: float
    node: str
    host: str
    backend: str
    attempt: int
    gpu_index: str
    gpu_uuid: str | None
    device_used_mib: float | None
    device_total_mib: float | None
    util_pct: float | None
    job_mib: float | None
    job_procs: dict[int, float | None]
    step: int | None

    def to_csv(self) -> list[str]:
        procs = " ".join(f"{pid}:{_f(v)}" for pid, v in sorted(self.job_procs.items()))
        return [f"{self.time:.3f}", self.node, self.host, self.backend, str(self.attempt), self.gpu_index,
                self.gpu_uuid or "", _f(self.device_used_mib), _f(self.device_total_mib), _f(self.util_pct, 0),
                _f(self.job_mib), procs, "" if self.step is None else str(self.step)]

    @classmethod
    def from_csv(cls, d: dict[str, str]) -> SampleRow:
        procs: dict[int, float | None] = {}
        for item in (d.get("job_procs") or "").split():
            pid, _, mib = item.partition(":")
            procs[int(pid)] = _num(mib)
        step = _num(d.get("step"))
        return cls(float(d["time"]), d["node"], d.get("host", ""), d["backend"], int(d["attempt"] or 1),
                   d["gpu_index"], d.get("gpu_uuid") or None, _num(d.get("device_used_mib")),
                   _num(d.get("device_total_mib")), _num(d.get("util_pct")), _num(d.get("job_mib")), procs,
                   None if step is None else int(step))


@dataclass
class PeakRow:
    """One row of peak_mem.csv: the peak of one GPU in one attempt on one node."""

    node: str
    host: str
    backend: str
    attempt: int
    gpu_index: str
    gpu_uuid: str | None = None
    peak_mib: float | None = None            # the job's processes (NVML per-process, or RSS)
    peak_time: float | None = None
    peak_step: int | None = None
    peak_device_used_mib: float | None = None   # whole device, other tenants included
    device_total_mib: float | None = None
    torch_max_allocated_mib: float | None = None  # tensors, as the rank's torch saw them
    torch_max_reserved_mib: float | None = None   # the caching allocator's pool
    samples: int = 0
    first_time: float | None = None
    last_time: float | None = None

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.node, self.attempt, self.gpu_index)

    def to_csv(self) -> list[str]:
        def s(v: Any, digits: int = 1) -> str:
            if v is None:
                return ""
            return _f(v, digits) if isinstance(v, float) else str(v)
        return [self.node, self.host, self.backend, str(self.attempt), self.gpu_index, self.gpu_uuid or "",
                s(self.peak_mib), s(self.peak_time, 3), s(self.peak_step), s(self.peak_device_used_mib),
                s(self.device_total_mib), s(self.torch_max_allocated_mib), s(self.torch_max_reserved_mib),
                str(self.samples), s(self.first_time, 3), s(self.last_time, 3)]

    @classmethod
    def from_csv(cls, d: dict[str, str]) -> PeakRow:
        step = _num(d.get("peak_step"))
        return cls(d["node"], d.get("host", ""), d["backend"], int(d["attempt"] or 1), d["gpu_index"],
                   d.get("gpu_uuid") or None, _num(d.get("peak_mib")), _num(d.get("peak_time")),
                   None if step is None else int(step), _num(d.get("peak_device_used_mib")),
                   _num(d.get("device_total_mib")), _num(d.get("torch_max_allocated_mib")),
                   _num(d.get("torch_max_reserved_mib")), int(_num(d.get("samples")) or 0),
                   _num(d.get("first_time")), _num(d.get("last_time")))


PEAK_COLUMNS = [f.name for f in fields(PeakRow)]
RUN_PEAK_COLUMNS = ["job", *PEAK_COLUMNS]


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


class PeakTracker:
    """Peaks per (node, attempt, GPU). The live sampler and the offline rebuild share this code,
    so a peak_mem.csv rebuilt after a crash says what the live one would have said."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int, str], PeakRow] = {}

    def add(self, r: SampleRow) -> bool:
        """Fold one sample in; True when the job's peak moved."""
        p = self.rows.get((r.node, r.attempt, r.gpu_index))
        if p is None:
            p = self.rows[(r.node, r.attempt, r.gpu_index)] = PeakRow(r.node, r.host, r.backend, r.attempt, r.gpu_index,
                                                                      first_time=r.time)
        p.samples += 1
        p.last_time = r.time
        p.gpu_uuid = p.gpu_uuid or r.gpu_uuid
        p.device_total_mib = r.device_total_mib if r.device_total_mib is not None else p.device_total_mib
        p.peak_device_used_mib = _max(p.peak_device_used_mib, r.device_used_mib)
        if r.job_mib is not None and (p.peak_mib is None or r.job_mib > p.peak_mib):
            p.peak_mib, p.peak_time, p.peak_step = r.job_mib, r.time, r.step
            return True
        return False

    def add_torch(self, key: tuple[str, int, str], allocated: float | None, reserved: float | None) -> None:
        p = self.rows.get(key)
        if p is not None:
            p.torch_max_allocated_mib = _max(p.torch_max_allocated_mib, allocated)
            p.torch_max_reserved_mib = _max(p.torch_max_reserved_mib, reserved)

    def peaks(self) -> list[PeakRow]:
        return sorted(self.rows.values(), key=lambda p: (p.attempt, p.node, p.gpu_index))


# ---------------------------------------------------------------------------------------- CSV files

class CsvAppender:
    """Appends rows with one O_APPEND write per call: readers never see half a row (a torn tail is
    skipped by `read_csv`), and agents of several nodes can share the file."""

    def __init__(self, path: Path, columns: list[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size == 0:
            self.append([columns])

    def append(self, rows: list[list[str]]) -> None:
        if self.fd is None or not rows:
            return
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        os.write(self.fd, buf.getvalue().encode())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV that may be being appended to: a last line without its newline is still
    being written and is skipped, as are repeated headers (two nodes creating the file at once)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    lines = text.splitlines()
    if not lines:
        return []
    header = next(csv.reader([lines[0]]))
    out = []
    for values in csv.reader(lines[1:]):
        if values == header or len(values) != len(header):
            continue
        out.append(dict(zip(header, values)))
    return out


def read_samples(path: Path) -> list[SampleRow]:
    out = []
    for d in read_csv(path):
        try:
            out.append(SampleRow.from_csv(d))
        except (KeyError, ValueError):
            continue
    return out


def read_peaks(path: Path) -> list[PeakRow]:
    out = []
    for d in read_csv(path):
        try:
            out.append(PeakRow.from_csv(d))
        except (KeyError, ValueError):
            continue
    return out


def write_peaks(path: Path, mine: list[PeakRow]) -> None:
    """Replace this writer's rows in peak_mem.csv, keeping other nodes' and earlier attempts' rows."""
    keys = {p.key for p in mine}
    rows = [p for p in read_peaks(path) if p.key not in keys] + mine
    rows.sort(key=lambda p: (p.attempt, p.node, p.gpu_index))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([PEAK_COLUMNS, *[p.to_csv() for p in rows]])
    atomic.write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------- heartbeats

class _Heartbeats:
    """This node's heartbeats, re-parsed only when a file changed (a stat per rank per sample)."""

    def __init__(self, jd: JobDir, ranks: list[int], attempt: int):
        self.jd, self.ranks, self.attempt = jd, ranks, attempt
        self.seen: dict[int, tuple[int, heartbeat.Heartbeat | None]] = {}

    def current(self) -> dict[int, heartbeat.Heartbeat]:
        out = {}
        for r in self.ranks:
            path = self.jd.heartbeat(r)
            try:
                mtime = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            cached = self.seen.get(r)
            if cached is None or cached[0] != mtime:
                cached = (mtime, heartbeat.read(path))
                self.seen[r] = cached
            hb = cached[1]
            if hb is not None and hb.attempt == self.attempt:
                out[r] = hb
        return out


# ---------------------------------------------------------------------------------------- Ray gauges

_gauges: tuple[Any, Any] | None = None
_gauges_lock = threading.Lock()


def ray_gauges() -> tuple[Any, Any] | None:
    """(current, peak) gauges, created once per process; None where Ray's metrics are unavailable."""
    global _gauges
    with _gauges_lock:
        if _gauges is None:
            try:
                from ray.util.metrics import Gauge
                tags = ("run", "job", "node", "gpu")
                _gauges = (Gauge("sl_job_gpu_memory_mib", "GPU memory held by the job's processes (MiB)", tags),
                           Gauge("sl_job_gpu_memory_peak_mib", "Peak GPU memory of the job's processes (MiB)", tags))
            except Exception as e:   # no Ray, or metrics disabled: the CSVs still get written
                log.info("Ray metrics unavailable: %s", e)
                return None
        return _gauges


# ---------------------------------------------------------------------------------------- the sampler

class Sampler:
    def __init__(self, job_dir: Path, node: str, gpus: list[str], pids: Callable[[], Iterable[ProcRef]],
                 step: Callable[[], int | None] | None = None, interval: float = DEFAULT_INTERVAL,
                 backend: str = "auto", *, ranks: list[int] | None = None, attempt: int = 1,
                 run: str | None = None, job: str | None = None, host: str | None = None, metrics: bool = True,
                 peaks_every: float = 5.0, nvml: Any = None, clock: Callable[[], float] = time.time):
        if interval <= 0:
            raise ValueError(f"monitor interval must be > 0 s, got {interval}")
        self.jd = JobDir(Path(job_dir))
        self.node, self.gpus, self.interval, self.attempt = node, [str(g) for g in gpus], interval, attempt
        self.host = host or socket.gethostname()
        self.job = job or self.jd.root.name
        self.run = run or self.jd.root.parent.parent.name
        self.ranks = list(ranks or [])
        self._pids, self._step, self._clock, self.peaks_every = pids, step, clock, peaks_every
        self.probe = open_probe(backend, self.gpus, nvml)
        self.backend = self.probe.name
        self._hb = _Heartbeats(self.jd, self.ranks, attempt)
        # Local rank i uses gpus[i]; with no GPUs (host backend) every rank lands on the one key.
        self._rank_gpu = {r: (self.gpus[i] if i < len(self.gpus) else None) for i, r in enumerate(self.ranks)}
        self.tracker = PeakTracker()
        self._out = CsvAppender(self.jd.gpu_mem_csv, SAMPLE_COLUMNS)
        self._gauges = ray_gauges() if metrics else None
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._peaks_dirty, self._peaks_written = False, 0.0
        self.samples, self.errors = 0, 0
        self._stopped = False

    # ----------------------------------------------------------- lifecycle

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, name=f"gpu-monitor-{self.job}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[PeakRow]:
        """Stop sampling, take one last sample (the memory's release), write peak_mem.csv."""
        if self._stopped:
            return self.tracker.peaks()
        self._stopped = True
        self._halt.set()
        clean = True
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 4 * self.interval))
            clean = not self._thread.is_alive()   # a hung NVML call: leave the thread, still write what we have
            if not clean:
                log.warning("%s: monitor thread did not stop (NVML hung?); writing peaks so far", self.job)
        if clean:
            self._safe_sample()
        with self._lock:
            peaks = self.tracker.peaks()
            self._write_peaks()
            self._out.close()
        if self._gauges is not None:
            for p in peaks:
                self._set_gauge(0, p.gpu_index, 0.0)
        if clean:
            self.probe.close()
        return peaks

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._halt.is_set():
            self._safe_sample()
            next_t += self.interval
            delay = next_t - time.monotonic()
            if delay < 0:   # fell behind (a slow query): skip the missed ticks rather than burst
                next_t, delay = time.monotonic(), 0.0
            if self._halt.wait(delay):
                break

    def _safe_sample(self) -> None:
        try:
            self.sample_once()
        except Exception:   # the monitor must never take the agent (or the job) down
            self.errors += 1
            if self.errors <= 3:
                log.exception("%s: monitor sample failed", self.job)

    # ----------------------------------------------------------- one sample

    def sample_once(self) -> list[SampleRow]:
        refs = list(self._pids())
        measured: list[GpuSample] = self.probe.sample(self.gpus, refs)
        t = self._clock()
        hbs = self._hb.current()
        step = self._step() if self._step is not None else max((h.step for h in hbs.values()), default=None)
        rows = [SampleRow(t, self.node, self.host, self.backend, self.attempt, s.gpu_index, s.gpu_uuid,
                          s.device_used_mib, s.device_total_mib, s.util_pct, s.job_mib, s.procs, step)
                for s in measured]
        with self._lock:
            if self._out.fd is None:   # stopped meanwhile
                return rows
            self._out.append([r.to_csv() for r in rows])
            for r in rows:
                self._peaks_dirty |= self.tracker.add(r)
            for rank, hb in hbs.items():
                gpu = self._rank_gpu.get(rank) or (rows[0].gpu_index if len(rows) == 1 else None)
                if gpu is not None:
                    self.tracker.add_torch((self.node, self.attempt, gpu), hb.torch_max_allocated_mib,
                                           hb.torch_max_reserved_mib)
            self.samples += 1
            if self._peaks_dirty and t - self._peaks_written >= self.peaks_every:
                self._write_peaks()
        if self._gauges is not None:
            for r in rows:
                cur = r.job_mib if r.job_mib is not None else r.device_used_mib
                peak = self.tracker.rows[(self.node, self.attempt, r.gpu_index)].peak_mib
                self._set_gauge(0, r.gpu_index, cur)
                self._set_gauge(1, r.gpu_index, peak)
        return rows

    def _write_peaks(self) -> None:
        mine = self.tracker.peaks()
        if mine:
            write_peaks(self.jd.peak_mem_csv, mine)
        self._peaks_dirty, self._peaks_written = False, self._clock()

    def _set_gauge(self, which: int, gpu: str, value: float | None) -> None:
        try:
            assert self._gauges is not None
            self._gauges[which].set(value, tags={"run": self.run, "job": self.job, "node": self.node, "gpu": gpu})
        except Exception as e:
            log.debug("gauge: %s", e)


# ---------------------------------------------------------------------------------------- peaks from files

def peaks_from_samples(rows: Iterable[SampleRow]) -> list[PeakRow]:
    t = PeakTracker()
    for r in rows:
        t.add(r)
    return t.peaks()


def job_peaks(jd: JobDir) -> list[PeakRow]:
    """The job's peaks: peak_mem.csv when it is current, else rebuilt from gpu_mem.csv (the agent
    died before its last write, or the run is live), keeping the torch peaks the file had."""
    try:
        samples_mtime = jd.gpu_mem_csv.stat().st_mtime_ns
    except FileNotFoundError:
        return read_peaks(jd.peak_mem_csv)
    try:
        if jd.peak_mem_csv.stat().st_mtime_ns >= samples_mtime:
            return read_peaks(jd.peak_mem_csv)
    except FileNotFoundError:
        pass
    old = {p.key: p for p in read_peaks(jd.peak_mem_csv)}
    rebuilt = peaks_from_samples(read_samples(jd.gpu_mem_csv))
    for p in rebuilt:
        if p.key in old:
            p.torch_max_allocated_mib = old[p.key].torch_max_allocated_mib
            p.torch_max_reserved_mib = old[p.key].torch_max_reserved_mib
    return rebuilt


def build_run_peaks(per_job: dict[str, list[PeakRow]]) -> list[list[str]]:
    """Rows of the run-level peak_memory.csv (header first), jobs in the given order. Pure."""
    return [RUN_PEAK_COLUMNS, *[[job, *p.to_csv()] for job, peaks in per_job.items() for p in peaks]]


def write_run_peaks(rd: RunDir, jobs: list[str] | None = None) -> Path:
    """Write <run>/peak_memory.csv from the job directories (all of them unless `jobs` is given)."""
    if jobs is None:
        jobs_dir = rd.root / "jobs"
        jobs = sorted(p.name for p in jobs_dir.iterdir() if p.is_dir()) if jobs_dir.is_dir() else []
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(build_run_peaks({n: job_peaks(rd.job(n)) for n in jobs}))
    atomic.write_text(rd.peak_memory_csv, buf.getvalue())
    return rd.peak_memory_csv


# ---------------------------------------------------------------------------------------- agent glue

def attach(agent: Any, interval: float | None = None, backend: str | None = None) -> Sampler | None:
    """Start a Sampler for a NodeAgent that has just spawned its ranks; kept as `agent.monitor`.
    SL_MONITOR_INTERVAL / SL_MONITOR_BACKEND override the defaults. Never raises: a monitor that
    cannot start must not stop the job."""
    agent.monitor = None
    try:
        info = agent.info()
        known = agent.known   # pid -> procs.Owned, grown by poll() as descendants appear
        s = Sampler(agent.jd.root, info["node"], info["gpus"],
                    lambda: [(o.pid, o.create_time) for o in list(known.values())],
                    interval=interval or float(os.environ.get("SL_MONITOR_INTERVAL", DEFAULT_INTERVAL)),
                    backend=backend or os.environ.get("SL_MONITOR_BACKEND", "auto"),
                    ranks=list(agent.ranks), attempt=agent.attempt, run=agent.run_id, job=agent.job,
                    host=info.get("host"))
        agent.monitor = s.start()
    except Exception:
        log.exception("GPU memory monitor did not start; the job runs unmonitored")
    return agent.monitor


def detach(agent: Any) -> list[PeakRow]:
    s: Sampler | None = getattr(agent, "monitor", None)
    if s is None:
        return []
    try:
        return s.stop()
    except Exception:
        log.exception("GPU memory monitor did not stop cleanly")
        return []
