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

Files (rows, reading and peaks in launcher.memfiles, re-exported here; paths in launcher.layout):
- jobs/<job>/gpu_mem.csv: one row per GPU per sample (SAMPLE_COLUMNS), appended with one
  O_APPEND write per sample, so the file is readable while the run is live and complete up to
  the last sample after a crash. Several nodes of one job append to the same file.
- jobs/<job>/peak_mem.csv: one row per (node, attempt, GPU) (PEAK_COLUMNS), replaced atomically
  every `peaks_every` s while a peak moved, and at stop().
- <run>/peak_memory.csv: all jobs' peak rows (`write_run_peaks`), rebuilt from the job files.

Ray metrics (ray.util.metrics gauges, in Prometheus as ray_sl_job_gpu_memory_mib and
ray_sl_job_gpu_memory_peak_mib) tagged run_id/job_name/attempt/node/gpu like the driver's progress
gauges (launcher.raymetrics): current and peak MiB of the job on each GPU (the job's processes).
Where that is unknown the gauge is not set (a Prometheus gap, not a made-up number).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from launcher import heartbeat, raymetrics
from launcher.layout import JobDir
from launcher.memfiles import (PEAK_COLUMNS, RUN_PEAK_COLUMNS, SAMPLE_COLUMNS, CsvAppender, PeakRow,  # noqa: F401
                               PeakTracker, SampleRow, build_run_peaks, job_peaks, peak_text, peaks_from_samples,
                               read_csv, read_peaks, read_samples, write_peaks, write_run_peaks)
from launcher.memprobe import GpuSample, ProcRef, open_probe

log = logging.getLogger("launcher.monitor")
DEFAULT_INTERVAL = 0.5   # s: catches a one-second spike with two samples
NAN = float("nan")


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
            try:   # definitions and tags (shared with the driver's progress gauges): launcher.raymetrics
                _gauges = (raymetrics.make_gauge(raymetrics.GPU_MEMORY), raymetrics.make_gauge(raymetrics.GPU_MEMORY_PEAK))
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
        self.latest: dict[str, float | None] = {}   # GPU -> the job's MiB in the last sample (the host's poll reads it)
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
                          s.device_used_mib, s.device_total_mib, s.util_pct, s.job_mib, s.procs, step, s.note)
                for s in measured]
        with self._lock:
            if self._out.fd is None:   # stopped meanwhile
                return rows
            self._out.append([r.to_csv() for r in rows])
            for r in rows:
                self._peaks_dirty |= self.tracker.add(r)
            self.latest = {r.gpu_index: r.job_mib for r in rows}
            for rank, hb in hbs.items():
                gpu = self._rank_gpu.get(rank) or (rows[0].gpu_index if len(rows) == 1 else None)
                if gpu is not None:
                    self.tracker.add_torch((self.node, self.attempt, gpu), hb.torch_max_allocated_mib,
                                           hb.torch_max_reserved_mib)
                    # The rank's own peak RSS is a floor under what the host backend measures: a rank
                    # that lived between two samples is still measured (by its last heartbeat).
                    if self.backend == "host" and hb.rss_hwm_mib:
                        self._peaks_dirty |= self.tracker.add_floor((self.node, self.attempt, gpu), self.host,
                                                                    self.backend, hb.rss_hwm_mib, t)
            self.samples += 1
            if self._peaks_dirty and t - self._peaks_written >= self.peaks_every:
                self._write_peaks()
        if self._gauges is not None:
            for r in rows:
                # NaN, not the device's use: Prometheus keeps it and Grafana draws a gap for "unknown".
                peak = self.tracker.rows[(self.node, self.attempt, r.gpu_index)].peak_mib
                self._set_gauge(0, r.gpu_index, NAN if r.job_mib is None else r.job_mib)
                self._set_gauge(1, r.gpu_index, NAN if peak is None else peak)
        return rows

    def _write_peaks(self) -> None:
        mine = self.tracker.peaks()
        if mine:
            write_peaks(self.jd.peak_mem_csv, mine)
        self._peaks_dirty, self._peaks_written = False, self._clock()

    def _set_gauge(self, which: int, gpu: str, value: float | None) -> None:
        try:
            assert self._gauges is not None
            self._gauges[which].set(value, tags=raymetrics.gpu_tags(self.run, self.job, self.attempt, self.node, gpu))
        except Exception as e:
            log.debug("gauge: %s", e)


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
