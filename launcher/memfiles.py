"""The monitor's files: gpu_mem.csv and peak_mem.csv rows, appending, tolerant reading, peaks.

Shared by the live sampler (launcher.monitor), the offline rebuild after a crash, and the
report, so that all three compute a peak the same way. Paths come from launcher.layout.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from launcher import atomic
from launcher.layout import JobDir, RunDir

SAMPLE_COLUMNS = ["time", "node", "host", "backend", "attempt", "gpu_index", "gpu_uuid", "device_used_mib",
                  "device_total_mib", "util_pct", "job_mib", "job_procs", "step", "job_mib_note"]


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
    job_mib_note: str = ""   # why job_mib is empty although the device was measured (memprobe.UNKNOWN_*)

    def to_csv(self) -> list[str]:
        procs = " ".join(f"{pid}:{_f(v)}" for pid, v in sorted(self.job_procs.items()))
        return [f"{self.time:.3f}", self.node, self.host, self.backend, str(self.attempt), self.gpu_index,
                self.gpu_uuid or "", _f(self.device_used_mib), _f(self.device_total_mib), _f(self.util_pct, 0),
                _f(self.job_mib), procs, "" if self.step is None else str(self.step), self.job_mib_note]

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
                   None if step is None else int(step), d.get("job_mib_note") or "")


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
    unknown_samples: int = 0   # samples where the job's memory could not be attributed (peak_mib ignores them)
    unknown_note: str = ""     # the last such sample's reason

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
                str(self.samples), s(self.first_time, 3), s(self.last_time, 3), str(self.unknown_samples),
                self.unknown_note]

    @classmethod
    def from_csv(cls, d: dict[str, str]) -> PeakRow:
        step = _num(d.get("peak_step"))
        return cls(d["node"], d.get("host", ""), d["backend"], int(d["attempt"] or 1), d["gpu_index"],
                   d.get("gpu_uuid") or None, _num(d.get("peak_mib")), _num(d.get("peak_time")),
                   None if step is None else int(step), _num(d.get("peak_device_used_mib")),
                   _num(d.get("device_total_mib")), _num(d.get("torch_max_allocated_mib")),
                   _num(d.get("torch_max_reserved_mib")), int(_num(d.get("samples")) or 0),
                   _num(d.get("first_time")), _num(d.get("last_time")), int(_num(d.get("unknown_samples")) or 0),
                   d.get("unknown_note") or "")


def peak_text(p: PeakRow) -> str:
    """The peak as reports print it: "unknown" (how often, why) where samples could not be
    attributed, never a 0 standing in for it; at least the known peak when some samples were."""
    if not p.unknown_samples:
        return "-" if p.peak_mib is None else f"{p.peak_mib:.1f}"
    why = f"{p.unknown_samples} of {p.samples} samples: {p.unknown_note}"
    return f">= {p.peak_mib:.1f} (unknown in {why})" if p.peak_mib else f"unknown ({why})"


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
        if r.job_mib is None and r.job_mib_note:
            p.unknown_samples, p.unknown_note = p.unknown_samples + 1, r.job_mib_note
        if r.job_mib is not None and (p.peak_mib is None or r.job_mib > p.peak_mib):
            p.peak_mib, p.peak_time, p.peak_step = r.job_mib, r.time, r.step
            return True
        return False

    def add_floor(self, key: tuple[str, int, str], host: str, backend: str, mib: float, t: float) -> bool:
        """One process's own peak (its kernel high-water mark): the job's peak is at least that."""
        p = self.rows.get(key)
        if p is None:
            p = self.rows[key] = PeakRow(key[0], host, backend, key[1], key[2], first_time=t, last_time=t)
        if p.peak_mib is None or mib > p.peak_mib:
            p.peak_mib, p.peak_time, p.peak_step = mib, t, None
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


# ---------------------------------------------------------------------------------------- peaks from files

def peaks_from_samples(rows: Iterable[SampleRow]) -> list[PeakRow]:
    t = PeakTracker()
    for r in rows:
        t.add(r)
    return t.peaks()


def job_peaks(jd: JobDir, rebuild: bool = True) -> list[PeakRow]:
    """The job's peaks: peak_mem.csv when it is current, else rebuilt from gpu_mem.csv (the agent
    died before its last write, or the run is live), keeping the torch peaks the file had.
    rebuild=False reads peak_mem.csv as it is: cheap while a long job is live (the driver)."""
    if not rebuild:
        return read_peaks(jd.peak_mem_csv)
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


def write_run_peaks(rd: RunDir, jobs: list[str] | None = None, rebuild: bool = True) -> Path:
    """Write <run>/peak_memory.csv from the job directories (all of them unless `jobs` is given);
    `rebuild` as in job_peaks."""
    if jobs is None:
        jobs_dir = rd.root / "jobs"
        jobs = sorted(p.name for p in jobs_dir.iterdir() if p.is_dir()) if jobs_dir.is_dir() else []
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(build_run_peaks({n: job_peaks(rd.job(n), rebuild) for n in jobs}))
    atomic.write_text(rd.peak_memory_csv, buf.getvalue())
    return rd.peak_memory_csv
