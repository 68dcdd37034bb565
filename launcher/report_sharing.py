"""Which jobs shared which GPU, for bin/report: from the attempts' placements (a packed attempt's
placement carries its share); and what a GPU's tenants held together, from their memory samples.
Pure: attempts or samples in, rows out."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launcher.memfiles import SampleRow


@dataclass(frozen=True)
class Tenancy:
    job: str
    attempt: int
    share_mib: int
    started: float
    ended: float | None


def _placement(a: dict[str, Any]) -> list[dict[str, Any]]:
    p = a.get("placement")
    return json.loads(p) if isinstance(p, str) else (p or [])


def shared_gpus(attempts: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], list[Tenancy]]:
    """(host, GPU) -> the packed attempts it held, in start order (GPUs no packed job used left out)."""
    out: dict[tuple[str, str], list[Tenancy]] = defaultdict(list)
    for job, atts in attempts.items():
        for a in atts:
            for p in _placement(a):
                if p.get("share_mib") and a.get("started"):
                    for gpu in p["gpus"]:
                        out[(p.get("host") or p["node"][:8], gpu)].append(
                            Tenancy(job, a["n"], int(p["share_mib"]), a["started"], a.get("ended")))
    return {k: sorted(v, key=lambda t: t.started) for k, v in sorted(out.items())}


def most_at_once(tenants: list[Tenancy], now: float) -> tuple[int, int]:
    """The most tenants one GPU had at the same time, and their shares' sum then (MiB)."""
    edges = sorted([(t.started, 1, t.share_mib) for t in tenants] +
                   [(t.ended if t.ended is not None else now, -1, t.share_mib) for t in tenants],
                   key=lambda e: (e[0], e[1]))   # an end before a start at the same instant
    n = mib = best_n = best_mib = 0
    for _t, d, m in edges:
        n, mib = n + d, mib + d * m
        if n > best_n:
            best_n, best_mib = n, mib
    return best_n, best_mib


def rows(attempts: dict[str, list[dict[str, Any]]], created: float, now: float) -> list[list[str]]:
    """One row per shared GPU: who held it (job#attempt share, from-to s into the run), the most at once."""
    out = []
    for (host, gpu), tenants in shared_gpus(attempts).items():
        n, mib = most_at_once(tenants, now)
        who = "; ".join(f"{t.job}#{t.attempt} {t.share_mib} MiB {t.started - created:.0f}-"
                        f"{(t.ended if t.ended is not None else now) - created:.0f} s" for t in tenants)
        out.append([host, gpu, str(len(tenants)), f"{n} ({mib} MiB)", who])
    return out


def held_per_second(samples: dict[str, list[SampleRow]]) -> dict[tuple[str, int], float]:
    """(GPU, second) -> what all jobs held on it in that second: each job's highest sample of the
    second, summed (the jobs' monitors do not sample in step, and one job samples twice a second)."""
    highest: dict[tuple[str, int, str], float] = defaultdict(float)
    for job, rows in samples.items():
        for r in rows:
            if r.job_mib is not None:
                key = (r.gpu_index, int(r.time), job)
                highest[key] = max(highest[key], r.job_mib)
    out: dict[tuple[str, int], float] = defaultdict(float)
    for (gpu, t, _job), mib in highest.items():
        out[(gpu, t)] += mib
    return dict(out)
