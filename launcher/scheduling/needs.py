"""How much GPU memory a job needs: what lets it share a GPU with others (packing).

In order: `resources.gpu_memory` in the plan; the highest peak measured for the same job (its
estimates.signature: method, model, params, training incl. micro-batch, data, width) in the
succeeded attempts of earlier runs, measured with the same monitor backend, plus a margin; else
unknown, and the job gets whole GPUs. Only 1-node x 1-GPU jobs pack; `share: never` opts out.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from launcher.layout import RunDir
from launcher.memfiles import read_peaks
from launcher.plan import Job
from launcher.scheduling.estimates import signature

log = logging.getLogger("launcher")
Source = Literal["plan", "measured", "unknown", "never", "wide"]


def with_margin(peak_mib: float) -> int:
    """A measured peak as a need: 15 % more, at least 512 MiB more (the next run's allocator
    need not fragment the same way)."""
    return int(peak_mib + max(512.0, 0.15 * peak_mib))


@dataclass(frozen=True)
class GpuNeed:
    mib: int | None      # None: whole GPUs
    source: Source

    def describe(self) -> str:
        return {"plan": f"{self.mib} MiB (resources.gpu_memory)",
                "measured": f"{self.mib} MiB (peak of earlier runs + margin)",
                "unknown": "unknown: a whole GPU", "never": "share: never: whole GPUs",
                "wide": "more than one GPU: whole GPUs"}[self.source]


def need(job: Job, measured: dict[str, float]) -> GpuNeed:
    r = job.config.resources
    if r.share == "never":
        return GpuNeed(None, "never")
    if r.nodes != 1 or r.gpus_per_node != 1:
        return GpuNeed(None, "wide")
    if r.gpu_memory:
        return GpuNeed(r.gpu_memory, "plan")
    peak = measured.get(signature(job))
    if peak:
        return GpuNeed(with_margin(peak), "measured")
    return GpuNeed(None, "unknown")


def measured_peaks(run_dirs: Iterable[Path], backend: str) -> dict[str, float]:
    """signature -> the highest one-GPU peak (MiB) of a succeeded attempt of that job in these runs,
    measured with `backend` (host RSS says nothing of a GPU's memory, nor the reverse)."""
    out: dict[str, float] = {}
    for root in run_dirs:
        rd = RunDir(root)
        try:
            con = sqlite3.connect(f"file:{rd.db}?mode=ro", uri=True, timeout=1)
            try:
                rows = con.execute("SELECT j.name, j.signature, a.n FROM attempts a JOIN jobs j ON j.name = a.job "
                                   "WHERE a.state = 'succeeded' AND j.signature IS NOT NULL").fetchall()
            finally:
                con.close()
        except sqlite3.Error as e:   # an old journal, one being written: nothing from it
            log.debug("no peaks from %s: %s", rd.db, e)
            continue
        for name, sig, attempt in rows:
            peaks = [p.peak_mib for p in read_peaks(rd.job(name).peak_mem_csv)
                     if p.attempt == attempt and p.backend == backend and p.peak_mib and not p.unknown_samples]
            if peaks:
                out[sig] = max(out.get(sig, 0.0), max(peaks))
    return out
