"""Before a job's GPUs are reused: wait until its processes are gone from them and device memory
is back near what it was before the job started (NVML), or, on the host backend, until the
job's processes are gone. A GPU that does not come back is reported, and the driver keeps it
out of scheduling rather than stacking the next job onto leaked memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from launcher.memprobe import GpuSample, Probe, ProcRef


@dataclass
class Release:
    released: bool
    waited_s: float
    backend: str
    still_held: dict[str, float | None] = field(default_factory=dict)   # gpu -> device used MiB over baseline
    job_pids_on_gpu: list[int] = field(default_factory=list)


def margin_mib(total_mib: float | None) -> float:
    """How far above its baseline a GPU may stay and count as free: 512 MiB or 2 % of it."""
    return max(512.0, 0.02 * (total_mib or 0.0))


def baseline(probe: Probe, gpus: list[str]) -> dict[str, float | None]:
    return {s.gpu_index: s.device_used_mib for s in probe.sample(gpus, [])}


def _held(samples: list[GpuSample], base: dict[str, float | None]) -> tuple[dict[str, float | None], list[int]]:
    held: dict[str, float | None] = {}
    pids: list[int] = []
    for s in samples:
        pids.extend(s.procs)
        b = base.get(s.gpu_index)
        if s.device_used_mib is not None and b is not None and s.device_used_mib > b + margin_mib(s.device_total_mib):
            held[s.gpu_index] = round(s.device_used_mib - b, 1)
    return held, pids


def wait_released(probe: Probe, gpus: list[str], refs: list[ProcRef], base: dict[str, float | None],
                  timeout: float = 60.0, interval: float = 0.5, clock=time.monotonic, sleep=time.sleep,
                  shared: bool = False) -> Release:
    """Poll until no job process holds memory on `gpus` and each GPU is within its margin of `base`.
    `shared` (a packed job): other tenants come and go on the GPU, so its device total says
    nothing of this job; only the job's own processes must be gone from it."""
    start = clock()
    while True:
        held, pids = _held(probe.sample(gpus, refs), base)
        if shared:
            held = {}
        if not held and not pids:
            return Release(True, clock() - start, probe.name)
        if clock() - start >= timeout:
            return Release(False, clock() - start, probe.name, held, sorted(set(pids)))
        sleep(interval)
