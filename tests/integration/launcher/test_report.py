"""bin/report on a real finished run: report.md, report.json, peak_memory.csv and non-empty PNGs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import monitor
from launcher.layout import RunDir
from tests.helpers import REPO
from tests.integration.launcher.conftest import launch, status

pytestmark = pytest.mark.integration
JOBS = ["stage1_align", "stage1_hs", "lisa", "sft_baseline", "lisa_hs", "lisa_fa", "sft_hs", "sft_fa"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    runs = tmp_path_factory.mktemp("runs")
    out = launch(REPO / "plans" / "pipeline_synthetic.yaml", runs)
    assert out.returncode == 0, out.stdout + out.stderr
    return RunDir(Path(status(runs)["dir"]))


def report(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher.report", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def ink(png: Path) -> float:
    """Share of pixels that are not background white: 0 for an empty canvas."""
    import matplotlib.image as mpimg
    img = mpimg.imread(png)
    return float((img[..., :3].min(axis=-1) < 0.9).mean())


def test_report_on_a_real_run(finished_run: RunDir) -> None:
    rd = finished_run
    out = report(str(rd.root))
    assert out.returncode == 0, out.stderr
    md = rd.report_md.read_text()
    for job in JOBS:
        assert f"| {job} | synthetic | succeeded | 1 |" in md
        # result.json metrics of every job in the results table, with what the job is about
        assert f"| {job} | {job} (synthetic) | final loss |" in md
    for name in ("gantt.png", "loss.png"):
        png = rd.report_dir / name
        assert f"]({name})" in md and png.stat().st_size > 10_000
        assert ink(png) > 0.02, f"{name} looks empty"
    sampled = [j for j in JOBS if rd.job(j).gpu_mem_csv.exists()]
    for job in sampled:   # every job the monitor sampled gets its memory plot
        assert ink(rd.report_dir / f"mem_{job}.png") > 0.01
    assert not sampled or "No memory samples" not in md

    data = json.loads(report(str(rd.root), "--format", "json").stdout)
    assert [j["name"] for j in data["jobs"]] == JOBS and data["state"] == "succeeded"
    assert {(r["job"], r["metric"]) for r in data["results"]} == {(j, m) for j in JOBS for m in ("final loss", "steps")}
    assert {"gantt", "loss"} <= set(data["plots"])
    with rd.peak_memory_csv.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == monitor.RUN_PEAK_COLUMNS and {r[0] for r in rows[1:]} == set(sampled)


def test_a_run_leaves_per_job_memory_csvs(finished_run: RunDir) -> None:
    for job in JOBS:
        jd = finished_run.job(job)
        rows = monitor.read_samples(jd.gpu_mem_csv)
        assert rows and rows[0].backend in ("host", "nvml")
        (peak,) = monitor.read_peaks(jd.peak_mem_csv)
        assert peak.peak_mib and peak.peak_mib > 5   # a Python rank holds more than 5 MiB
