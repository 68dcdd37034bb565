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
"""

from __future__ import annotations

import importlib
import logging
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


class Probe(Protocol):
    name: str

    def sample(self, gpus: list[str], refs: list[ProcRef]) -> list[GpuSample]: ...

    def close(self) -> None: ...


def _mib(n: float | int | None) -> float | None:
    return None if n is None else round(n / MIB, 1)


class NvmlProbe:
    """NVML per GPU. `nvml` is the pynvml module (a stub in unit tests); init happens here."""

    name = "nvml"

    def __init__(self, gpus: list[str], nvml: ModuleType | Any | None = None):
        self.nv = nvml if nvml is not None else importlib.import_module("pynvml")
        self.nv.nvmlInit()     # raises NVMLError_LibraryNotFound where there is no driver
        self._warned: set[tuple[str, str, str]] = set()
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
        mine = {ref_pid(r) for r in refs}
        out = []
        for g in gpus:
            h = self.handles.get(g)
            if h is None:
                out.append(GpuSample(g, self.uuids.get(g), None, None, None, None))
                continue
            mem = self._query(g, "memory", self.nv.nvmlDeviceGetMemoryInfo, h)
            util = self._query(g, "utilization", self.nv.nvmlDeviceGetUtilizationRates, h)
            running = self._query(g, "processes", self.nv.nvmlDeviceGetComputeRunningProcesses, h)
            procs: dict[int, float | None] = {}
            for p in running or []:
                if p.pid not in mine:
                    continue
                # None where the driver cannot tell (WDDM, some containers); a PID may hold several contexts.
                used = None if p.usedGpuMemory is None else p.usedGpuMemory / MIB
                if p.pid in procs:
                    prev = procs[p.pid]
                    used = None if prev is None or used is None else prev + used
                procs[p.pid] = used
            procs = {pid: (None if v is None else round(v, 1)) for pid, v in procs.items()}
            # A total with an unknown part would understate the job: leave it empty instead.
            job = None if running is None or any(v is None for v in procs.values()) else round(sum(procs.values()), 1)  # type: ignore[arg-type]
            out.append(GpuSample(g, self.uuids.get(g), _mib(mem.used) if mem is not None else None,
                                 _mib(mem.total) if mem is not None else None,
                                 float(util.gpu) if util is not None else None, job, procs))
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

