"""How memory is measured: one probe call returns the state of the job's GPUs right now.

Two backends with one result type, so the sampler, the CSV files and the report do not care
which one measured:

- `NvmlProbe`: NVML (nvidia-ml-py) per GPU the agent holds: device used/total, utilisation, and
  the memory of the compute processes that belong to the job's process tree. A query the GPU
  does not support (or that fails) gives None, never an exception.
- `HostProbe`: where NVML is absent (CPU machines, CI): the resident memory (RSS) of the job's
  processes (psutil), attributed to the GPU each rank was given (CUDA_VISIBLE_DEVICES[LOCAL_RANK]
  from its environment), so a simulated-GPU run gets the same per-GPU files.

Processes are passed as PIDs or (PID, create time) pairs; a pair protects the host probe from
reading a recycled PID. Vanished processes are skipped silently.

NVML reports PIDs of the namespace the driver sees (the host's). A job process is matched by any of
its PIDs across nested PID namespaces (/proc/<pid>/status NSpid, as far as this /proc shows them),
so an agent that sees the outer namespace still finds ranks running in an inner one. When no
process of the job is found on a GPU, the job's memory there is 0 only if that is certain (every
process NVML lists is someone else's, visible here, or NVML lists none and the device is at its
idle level); otherwise it is unknown (None) with the reason in `GpuSample.note`, never 0: inside
a container NVML shows host PIDs that this namespace cannot resolve.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Protocol

import psutil

from launcher.procs import start_time

log = logging.getLogger("launcher.monitor")
MIB = 2**20
HOST_KEY = "host"          # host-probe key for a process no GPU could be attributed to
CREATE_TIME_TOLERANCE = 0.01

ProcRef = int | tuple[int, float]   # a PID, or (PID, create time) as procs.Owned records it


def ref_pid(ref: ProcRef) -> int:
    return ref[0] if isinstance(ref, tuple) else int(ref)


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one instant. None means "not measured" (unsupported query, no such backend field)."""

    gpu_index: str                     # the id the agent holds (a CUDA_VISIBLE_DEVICES entry)
    gpu_uuid: str | None
    device_used_mib: float | None
    device_total_mib: float | None
    util_pct: float | None
    job_mib: float | None              # sum over the job's processes on this GPU
    procs: dict[int, float | None] = field(default_factory=dict)   # job PID -> MiB
    note: str = ""                     # why job_mib is None where the device was measured (UNKNOWN_*)


class Probe(Protocol):
    name: str

    def sample(self, gpus: list[str], refs: list[ProcRef]) -> list[GpuSample]: ...

    def close(self) -> None: ...


def _mib(n: float | int | None) -> float | None:
    return None if n is None else round(n / MIB, 1)


UNKNOWN_FOREIGN_PIDS = "nvml_pids_not_in_this_namespace"   # NVML lists PIDs this /proc cannot see
UNKNOWN_NO_PROCESSES = "nvml_lists_no_process_while_memory_used"
UNKNOWN_PROCESS_MEMORY = "nvml_per_process_memory_not_reported"   # usedGpuMemory None (WDDM, some containers)
UNKNOWN_PROCESS_QUERY = "nvml_process_list_unavailable"
IDLE_SLACK_MIB = 512.0   # device used above its lowest seen by this much: someone holds memory


def parse_nspid(status: str) -> tuple[int, ...]:
    """The NSpid line of /proc/<pid>/status: the process's PID in each PID namespace from this
    /proc's namespace inwards; () where the kernel has no such line (before 4.1)."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return tuple(int(x) for x in line.split()[1:] if x.isdigit())
    return ()


def pid_aliases(pid: int, proc: str = "/proc") -> tuple[int, ...]:
    """All PIDs of one process that this /proc shows (itself included)."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            return tuple(dict.fromkeys((pid, *parse_nspid(f.read()))))
    except OSError:
        return (pid,)


def pid_visible(pid: int, proc: str = "/proc") -> bool:
    return pid > 0 and os.path.exists(f"{proc}/{pid}")


@dataclass(frozen=True)
class Attribution:
    job_mib: float | None
    procs: dict[int, float | None]
    note: str = ""


def attribute(running: list[tuple[int, float | None]] | None, aliases: dict[int, int],
              visible: Callable[[int], bool], device_used_mib: float | None, idle_mib: float | None) -> Attribution:
    """The job's memory on one GPU from NVML's process list (PID, MiB or None). Pure.

    `aliases` maps every PID of a job process (NSpid) to the job's PID for it; `visible` says
    whether a PID exists in this namespace; `idle_mib` is the lowest device use seen on this GPU."""
    if running is None:
        return Attribution(None, {}, UNKNOWN_PROCESS_QUERY)
    procs: dict[int, float | None] = {}
    for pid, used in running:
        mine = aliases.get(pid)
        if mine is None:
            continue
        if mine in procs:   # a PID may hold several contexts
            prev = procs[mine]
            used = None if prev is None or used is None else prev + used
        procs[mine] = used
    procs = {pid: (None if v is None else round(v, 1)) for pid, v in procs.items()}
    if procs:
        # A total with an unknown part would understate the job: leave it empty instead.
        known = [v for v in procs.values() if v is not None]
        if len(known) < len(procs):
            return Attribution(None, procs, UNKNOWN_PROCESS_MEMORY)
        return Attribution(round(sum(known), 1), procs)
    if running:
        if all(visible(pid) for pid, _ in running):
            return Attribution(0.0, {})   # all of it is other tenants' on this host
        return Attribution(None, {}, UNKNOWN_FOREIGN_PIDS)
    if device_used_mib is not None and idle_mib is not None and device_used_mib > idle_mib + IDLE_SLACK_MIB:
        return Attribution(None, {}, UNKNOWN_NO_PROCESSES)
    return Attribution(0.0, {})


class NvmlProbe:
    """NVML per GPU. `nvml` is the pynvml module (a stub in unit tests); init happens here."""

    name = "nvml"

    def __init__(self, gpus: list[str], nvml: ModuleType | Any | None = None):
        self.nv = nvml if nvml is not None else importlib.import_module("pynvml")
        self.nv.nvmlInit()     # raises NVMLError_LibraryNotFound where there is no driver
        self._warned: set[tuple[str, str, str]] = set()
        self._idle: dict[str, float] = {}   # GPU -> lowest device used seen (MiB)
        self._nspids: dict[ProcRef, tuple[int, ...]] = {}   # a process's NSpid never changes: read once
        self.proc = "/proc"
        self.handles: dict[str, Any] = {g: self._query(g, "handle", self._handle, g) for g in gpus}
        self.uuids: dict[str, str | None] = {}
        for g, h in self.handles.items():
            u = self._query(g, "uuid", self.nv.nvmlDeviceGetUUID, h) if h is not None else None
            self.uuids[g] = u.decode() if isinstance(u, bytes) else u

    def _handle(self, gpu: str) -> Any:
        # Ray hands out indices; a node started with UUIDs in CUDA_VISIBLE_DEVICES gives UUIDs.
        if gpu.startswith(("GPU-", "MIG-")):
            return self.nv.nvmlDeviceGetHandleByUUID(gpu)
        return self.nv.nvmlDeviceGetHandleByIndex(int(gpu))

    def _query(self, gpu: str, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except (self.nv.NVMLError, ValueError) as e:   # ValueError: a GPU id that is neither index nor UUID
            key = (gpu, what, type(e).__name__)
            if key not in self._warned and len(self._warned) < 256:   # bounded: a log line per kind, once
                self._warned.add(key)
                log.info("GPU %s: NVML %s unavailable (%s); recorded as empty", gpu, what, type(e).__name__)
            return None

    def sample(self, gpus: list[str], refs: list[ProcRef]) -> list[GpuSample]:
        # Rebuilt from the live refs each sample, so it is bounded by the process tree.
        self._nspids = {r: self._nspids.get(r) or pid_aliases(ref_pid(r), self.proc) for r in refs}
        aliases = {alias: ref_pid(r) for r, nspids in self._nspids.items() for alias in nspids}
        out = []
        for g in gpus:
            h = self.handles.get(g)
            if h is None:
                out.append(GpuSample(g, self.uuids.get(g), None, None, None, None))
                continue
            mem = self._query(g, "memory", self.nv.nvmlDeviceGetMemoryInfo, h)
            util = self._query(g, "utilization", self.nv.nvmlDeviceGetUtilizationRates, h)
            running = self._query(g, "processes", self.nv.nvmlDeviceGetComputeRunningProcesses, h)
            used_mib = _mib(mem.used) if mem is not None else None
            if used_mib is not None:
                self._idle[g] = min(self._idle.get(g, used_mib), used_mib)
            # usedGpuMemory is None where the driver cannot tell (WDDM, some containers).
            listed = None if running is None else [
                (p.pid, None if p.usedGpuMemory is None else p.usedGpuMemory / MIB) for p in running]
            a = attribute(listed, aliases, lambda pid: pid_visible(pid, self.proc), used_mib, self._idle.get(g))
            out.append(GpuSample(g, self.uuids.get(g), used_mib, _mib(mem.total) if mem is not None else None,
                                 float(util.gpu) if util is not None else None, a.job_mib, a.procs, a.note))
        return out

    def close(self) -> None:
        try:
            self.nv.nvmlShutdown()
        except self.nv.NVMLError:
            pass


@dataclass
class _Tracked:
    proc: psutil.Process
    create_time: float
    gpu: str


class HostProbe:
    """RSS of the job's processes, grouped by the GPU each was given. RSS counts pages shared
    between processes (fork, copy-on-write) once per process: an upper bound, cheap to read."""

    name = "host"

    def __init__(self) -> None:
        self._tracked: dict[int, _Tracked] = {}

    @staticmethod
    def _gpu_of(p: psutil.Process, gpus: list[str]) -> str:
        try:
            env = p.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            env = {}
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        try:
            dev = visible[int(env["LOCAL_RANK"])]
            if dev in gpus:
                return dev
        except (KeyError, ValueError, IndexError):
            pass
        return gpus[0] if len(gpus) == 1 else HOST_KEY

    def _track(self, ref: ProcRef, gpus: list[str]) -> _Tracked | None:
        pid = ref_pid(ref)
        want = ref[1] if isinstance(ref, tuple) else None
        t = self._tracked.get(pid)
        if t is not None and (want is None or abs(t.create_time - want) <= CREATE_TIME_TOLERANCE):
            return t
        try:
            p = psutil.Process(pid)
            ct = start_time(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        if want is not None and abs(ct - want) > CREATE_TIME_TOLERANCE:
            return None   # the PID now belongs to another process
        return _Tracked(p, ct, self._gpu_of(p, gpus))   # environ read once per process, not per sample

    def sample(self, gpus: list[str], refs: list[ProcRef]) -> list[GpuSample]:
        per_gpu: dict[str, dict[int, float | None]] = {g: {} for g in (gpus or [HOST_KEY])}
        live: dict[int, _Tracked] = {}
        for ref in refs:
            t = self._track(ref, gpus)
            if t is None:
                continue
            try:
                if t.proc.status() == psutil.STATUS_ZOMBIE:
                    continue   # exited, holds no memory; only its parent (maybe init) has yet to reap it
                rss = t.proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            live[t.proc.pid] = t
            per_gpu.setdefault(t.gpu, {})[t.proc.pid] = _mib(rss)
        self._tracked = live   # bounded by the live tree: exited processes are forgotten
        return [GpuSample(g, None, None, None, None, round(sum(v or 0.0 for v in procs.values()), 1), procs)
                for g, procs in per_gpu.items()]

    def close(self) -> None:
        self._tracked.clear()


def open_probe(kind: str, gpus: list[str], nvml: ModuleType | Any | None = None) -> Probe:
    """kind: 'nvml' (fail if NVML is absent), 'host', or 'auto' (NVML when it initialises and the
    agent holds GPUs, else host)."""
    if kind not in ("auto", "nvml", "host"):
        raise ValueError(f"unknown monitor backend {kind!r} (auto, nvml, host)")
    if kind == "host" or (kind == "auto" and not gpus):
        return HostProbe()
    try:
        return NvmlProbe(gpus, nvml)
    except Exception as e:   # NVMLError_LibraryNotFound / DriverNotLoaded, or no pynvml at all
        if kind == "nvml":
            raise
        log.info("NVML unavailable (%s): measuring host memory of the job's processes instead", type(e).__name__)
        return HostProbe()

