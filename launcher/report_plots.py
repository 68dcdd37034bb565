"""The report's PNG plots: memory timeline per job (peak marked), loss curves, jobs on GPUs (Gantt),
memory and utilisation per GPU over the run.

Headless (Agg). Times are seconds since the run started, so the three plots line up.
Long timelines are thinned by keeping each bucket's maximum: a peak is never thinned away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from launcher import monitor  # noqa: E402
from launcher.layout import RunDir  # noqa: E402
from launcher.monitor import SampleRow  # noqa: E402

if TYPE_CHECKING:
    from launcher.report import Report

MAX_POINTS = 3000   # per line: plenty for a 10-inch figure
DPI = 110
COLORS = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors


def thin(xs: list[float], ys: list[float], n: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """At most ~n points, keeping the maximum of each bucket (so the plotted peak is the real one)."""
    if len(xs) <= n:
        return xs, ys
    size = -(-len(xs) // n)
    ox, oy = [], []
    for i in range(0, len(xs), size):
        j = max(range(i, min(i + size, len(xs))), key=lambda k: ys[k])
        ox.append(xs[j])
        oy.append(ys[j])
    return ox, oy


def _lines(ax: Any, pts: list[tuple[float, float, int]], label: str, **kw: Any) -> None:
    """One line per attempt (no segment bridging a restart), thinned, labelled once."""
    for i, a in enumerate(sorted({p[2] for p in pts})):
        xs, ys = thin([p[0] for p in pts if p[2] == a], [p[1] for p in pts if p[2] == a])
        ax.plot(xs, ys, marker="." if len(xs) <= 60 and kw.get("ls") is None else None,
                label=label if i == 0 else None, **kw)


def time_unit(span_s: float) -> tuple[float, str]:
    """Seconds, minutes or hours, whichever reads best for a span: (divisor, axis label)."""
    if span_s > 3 * 3600:
        return 3600.0, "hours since the run started"
    if span_s > 600:
        return 60.0, "minutes since the run started"
    return 1.0, "seconds since the run started"


def _mib(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name


def memory_plot(job: str, rows: list[SampleRow], peaks: list[monitor.PeakRow], t0: float, path: Path) -> str | None:
    """One line per (host, GPU): the job's processes' MiB; the device's used MiB dotted where NVML
    measured it; each line's peak marked and labelled; torch's reserved peak as a dashed level."""
    series: dict[tuple[str, str], list[SampleRow]] = {}
    for r in rows:
        series.setdefault((r.host or r.node[:8], r.gpu_index), []).append(r)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.2))
    div, xlabel = time_unit(max(r.time for r in rows) - t0)
    backends = sorted({r.backend for r in rows})
    multi_host = len({h for h, _ in series}) > 1
    best: tuple[float, float, SampleRow] | None = None
    for i, ((host, gpu), rs) in enumerate(sorted(series.items())):
        color = COLORS[i % len(COLORS)]
        name = f"{host} GPU {gpu}" if multi_host else f"GPU {gpu}"
        pts = [((r.time - t0) / div, r.job_mib, r) for r in rs if r.job_mib is not None]
        if pts:
            _lines(ax, [(x, y, r.attempt) for x, y, r in pts], color=color, lw=1.6, label=f"{name}: job processes")
            px, py, pr = max(pts, key=lambda p: p[1])   # first of equal maxima: when the peak was reached
            if best is None or py > best[1]:
                best = (px, py, pr)
            ax.plot([px], [py], marker="*", ms=14, color="crimson", zorder=5)
            ax.annotate(f"peak {_mib(py)} MiB" + (f"\nstep {pr.step}" if pr.step is not None else ""),
                        (px, py), textcoords="offset points", xytext=(8, -4), fontsize=9, color="crimson", va="top")
        dev = [((r.time - t0) / div, r.device_used_mib, r.attempt) for r in rs if r.device_used_mib is not None]
        if dev:
            _lines(ax, dev, color=color, lw=1.0, ls=":", label=f"{name}: device used (all processes)")
        for i_a, p in enumerate(q for q in peaks if q.gpu_index == gpu and (q.host or q.node[:8]) == host
                                and q.torch_max_reserved_mib):
            span = [(r.time - t0) / div for r in rs if r.attempt == p.attempt]
            if span:   # the attempt's own torch peak, over that attempt's time only
                ax.hlines(p.torch_max_reserved_mib, min(span), max(span), colors=[color], linestyles="--", lw=0.9,
                          label=f"{name}: torch reserved peak" if i_a == 0 else None)
    what = "resident memory (host backend, psutil)" if backends == ["host"] else "GPU memory (NVML)" \
        if backends == ["nvml"] else "memory (" + ", ".join(backends) + ")"
    title = f"{job}: {what}"
    if best is not None:
        title += f" — peak {_mib(best[1])} MiB on GPU {best[2].gpu_index}" + \
                 (f" at step {best[2].step}" if best[2].step is not None else "")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("MiB")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)   # headroom: the peak's label stays inside the axes
    attempts = sorted({r.attempt for r in rows})
    for a in attempts[1:]:
        start = (min(r.time for r in rows if r.attempt == a) - t0) / div
        ax.axvline(start, color="grey", lw=0.8, ls="-.")
        ax.text(start, ax.get_ylim()[1], f" attempt {a}", fontsize=8, color="grey", va="top")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def loss_plot(r: Report, path: Path) -> str | None:
    jobs = [j for j in r.jobs if j.loss]
    if not jobs:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, j in enumerate(jobs):
        color = COLORS[i % len(COLORS)]
        for a in sorted({p["attempt"] for p in j.loss}):
            pts = sorted((p["step"], p["loss"]) for p in j.loss if p["attempt"] == a)
            label = j.name if a == min(p["attempt"] for p in j.loss) else f"{j.name} (attempt {a})"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=1.5, ls="-" if a == 1 else "--",
                    marker="." if len(pts) < 40 else None, label=label)
    ax.set_title(f"training loss ({len(jobs)} job{'s' if len(jobs) > 1 else ''}, from metrics.jsonl)", fontsize=11)
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def gantt_plot(r: Report, path: Path) -> str | None:
    """A row per (host, GPU) a job was placed on; a bar per attempt; failed attempts hatched."""
    bars: list[tuple[str, str, float, float, str, int]] = []   # (row, job, start, end, state, attempt)
    now = r.ended or max([a["ended"] or 0 for j in r.jobs for a in j.attempts] + [r.created])
    for j in r.jobs:
        for a in j.attempts:
            for p in a.get("placement") or []:
                for g in p.get("gpus") or []:
                    bars.append((f"{p.get('host') or p['node'][:8]} GPU {g}", j.name, a["started"] - r.created,
                                 (a["ended"] or now) - r.created, a["state"], a["n"]))
    if not bars:
        return None
    div, xlabel = time_unit(max(b[3] for b in bars))
    bars = [(row, job, start / div, end / div, state, n) for row, job, start, end, state, n in bars]
    rows = sorted({b[0] for b in bars})
    names = [j.name for j in r.jobs if any(b[1] == j.name for b in bars)]
    color = {n: COLORS[i % len(COLORS)] for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.7 * len(rows)))
    lo, hi = min(b[2] for b in bars), max(b[3] for b in bars)
    span = (hi - lo) or 1.0
    px_per_s = fig.get_figwidth() * DPI * 0.78 / span   # the axes take ~78 % of the width (legend right)
    for row, job, start, end, state, n in bars:
        y = rows.index(row)
        failed = state not in ("succeeded", "running")
        ax.barh(y, max(end - start, span * 0.003), left=start, height=0.6, color=color[job], alpha=0.85,
                edgecolor="red" if failed else "black", lw=1.5 if failed else 0.5, hatch="//" if failed else None)
        label = job + (f" #{n}" if n > 1 else "")
        if (end - start) * px_per_s > 6.5 * len(label) + 6:   # ~6.5 px per bold 8-pt character: the name fits
            ax.text((start + end) / 2, y, label, ha="center", va="center", fontsize=8, color="white",
                    fontweight="bold", clip_on=True)
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(f"jobs on GPUs over time (run {r.run}, {r.state})", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=color[n]) for n in names]
    labels = list(names)
    if any(b[4] not in ("succeeded", "running") for b in bars):
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="red", hatch="//"))
        labels.append("attempt failed / killed")
    ax.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


@dataclass
class GpuSeries:
    """One GPU over the run, from every job that sampled it, in time order."""

    times: list[float] = field(default_factory=list)
    mib: list[float | None] = field(default_factory=list)    # device used (NVML), else the jobs' processes (host)
    util: list[float | None] = field(default_factory=list)   # NVML utilisation %, None with the host backend


def gpu_series(rows: list[SampleRow]) -> dict[tuple[str, str], GpuSeries]:
    """(host, GPU) -> its timeline. Device-wide numbers where NVML gave them (other tenants
    included), else the sampling job's own processes: the host backend has nothing device-wide."""
    out: dict[tuple[str, str], GpuSeries] = {}
    for r in sorted(rows, key=lambda r: r.time):
        s = out.setdefault((r.host or r.node[:8], r.gpu_index), GpuSeries())
        s.times.append(r.time)
        s.mib.append(r.device_used_mib if r.device_used_mib is not None else r.job_mib)
        s.util.append(r.util_pct)
    return out


def gpu_plot(series: dict[tuple[str, str], GpuSeries], t0: float, path: Path) -> str | None:
    """Memory (top) and utilisation (bottom) per GPU over the run, on one time axis."""
    if not series:
        return None
    fig, (ax_m, ax_u) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    div, xlabel = time_unit(max(t for s in series.values() for t in s.times) - t0)
    multi_host = len({h for h, _ in series}) > 1
    any_util = False
    for i, ((host, gpu), s) in enumerate(sorted(series.items())):
        color = COLORS[i % len(COLORS)]
        name = f"{host} GPU {gpu}" if multi_host else f"GPU {gpu}"
        m = [((t - t0) / div, v) for t, v in zip(s.times, s.mib) if v is not None]
        if m:
            xs, ys = thin([p[0] for p in m], [p[1] for p in m])
            ax_m.plot(xs, ys, color=color, lw=1.3, label=name)
        u = [((t - t0) / div, v) for t, v in zip(s.times, s.util) if v is not None]
        if u:
            any_util = True
            xs, ys = thin([p[0] for p in u], [p[1] for p in u])
            ax_u.plot(xs, ys, color=color, lw=1.3, label=name)
    ax_m.set_title("memory per GPU (device used where NVML measured it, else the jobs' processes)", fontsize=11)
    ax_m.set_ylabel("MiB")
    ax_m.set_ylim(bottom=0)
    ax_m.grid(alpha=0.3)
    ax_m.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax_u.set_title("GPU utilisation (NVML)", fontsize=11)
    ax_u.set_ylabel("%")
    ax_u.set_ylim(0, 105)
    ax_u.set_xlabel(xlabel)
    ax_u.grid(alpha=0.3)
    if any_util:
        ax_u.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:   # say so rather than draw an empty axis that reads as 0 %
        ax_u.text(0.5, 0.5, "not measured (host backend: no NVML on this machine)", ha="center", va="center",
                  transform=ax_u.transAxes, fontsize=10, color="grey")
    return _save(fig, path)


def draw_all(r: Report, rd: RunDir) -> dict[str, str]:
    """Draw every plot there is data for into rd.report_dir; returns name -> file name."""
    out: dict[str, str] = {}
    for j in r.jobs:
        name = memory_plot(j.name, monitor.read_samples(rd.job(j.name).gpu_mem_csv), j.peaks, r.created,
                           rd.report_dir / f"mem_{j.name}.png")
        if name:
            out[f"mem_{j.name}"] = name
    for key, fn in (("loss", loss_plot), ("gantt", gantt_plot)):
        name = fn(r, rd.report_dir / f"{key}.png")
        if name:
            out[key] = name
    rows = [row for j in r.jobs for row in monitor.read_samples(rd.job(j.name).gpu_mem_csv)]
    name = gpu_plot(gpu_series(rows), r.created, rd.report_dir / "gpus.png")
    if name:
        out["gpus"] = name
    return out
