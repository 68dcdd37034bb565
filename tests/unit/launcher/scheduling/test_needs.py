"""A job's GPU memory need: the plan's, the peak of earlier runs (plus the margin), or unknown."""

from __future__ import annotations

from pathlib import Path

from launcher.journal import Journal
from launcher.layout import RunDir
from launcher.memfiles import PeakRow, write_peaks
from launcher.plan import load_plan
from launcher.resources import ClusterShape
from launcher.scheduling.estimates import signature
from launcher.scheduling.needs import GpuNeed, measured_peaks, need, with_margin

PLAN = """
defaults: {method: synthetic, params: {steps: 5}}
jobs:
  given: {resources: {gpu_memory: 6GiB}}
  learned: {}
  never: {resources: {gpu_memory: 6GiB, share: never}}
  wide: {resources: {gpus_per_node: 2, gpu_memory: 6GiB}}
"""


def jobs(tmp_path: Path):   # type: ignore[no-untyped-def]
    (tmp_path / "plan.yaml").write_text(PLAN)
    return load_plan(tmp_path / "plan.yaml", cluster=ClusterShape.single(2)).jobs


def past_run(root: Path, job, peaks: list[tuple[int, str, float]], succeeded: tuple[int, ...]) -> Path:   # type: ignore[no-untyped-def]
    rd = RunDir(root)
    rd.job(job.name).root.mkdir(parents=True)
    j = Journal(rd.db)
    j.create_run(root.name, "plan.yaml", {}, 1, 1.0, "h")
    j.add_job(job.name, job.base, "synthetic", [], 1, 0, signature=signature(job))
    for n in {a for a, _, _ in peaks}:
        j.start_attempt(job.name, n, [], None, 0)
        j.end_attempt(job.name, n, "succeeded" if n in succeeded else "failed", None, {}, 5)
    j.close()
    write_peaks(rd.job(job.name).peak_mem_csv, [PeakRow("node", "h", backend, n, "0", peak_mib=mib, samples=3)
                                                for n, backend, mib in peaks])
    return root


def test_the_plans_need_then_the_measured_one_then_whole_gpus(tmp_path: Path) -> None:
    js = jobs(tmp_path)
    assert need(js["given"], {}) == GpuNeed(6144, "plan")
    assert need(js["learned"], {}) == GpuNeed(None, "unknown")
    assert need(js["learned"], {signature(js["learned"]): 1000.0}) == GpuNeed(with_margin(1000.0), "measured")
    assert need(js["never"], {}).source == "never" and need(js["wide"], {}).source == "wide"
    assert with_margin(1000) == 1512 and with_margin(10000) == 11500


def test_measured_peaks_take_succeeded_attempts_of_the_same_backend_only(tmp_path: Path) -> None:
    job = jobs(tmp_path)["learned"]
    # attempt 1 failed (an OOM's peak says nothing of what suffices); attempt 2 on the host backend
    a = past_run(tmp_path / "runs" / "a", job, [(1, "host", 9000.0), (2, "host", 1200.0), (2, "nvml", 700.0)],
                 succeeded=(2,))
    b = past_run(tmp_path / "runs" / "b", job, [(1, "host", 1500.0)], succeeded=(1,))
    assert measured_peaks([a], "host") == {signature(job): 1200.0}
    assert measured_peaks([a, b], "host") == {signature(job): 1500.0}   # the highest of the runs
    assert measured_peaks([a], "nvml") == {signature(job): 700.0}
    assert measured_peaks([tmp_path / "runs" / "missing"], "host") == {}
