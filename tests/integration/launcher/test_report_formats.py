"""bin/report --format csv|latex and --compare on two real finished runs; the per-GPU plot;
bin/status --watch's GPU-hours and ETA line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.integration.launcher.conftest import launch, status

pytestmark = pytest.mark.integration


def plan(steps: int) -> str:
    return f"""
name: cmp{steps}
jobs:
  train_a:
    method: synthetic
    resources: {{nodes: 1, gpus_per_node: 2}}
    params: {{steps: {steps}, step_time: 0.05}}
    checkpoint: {{every: 5, keep: 2}}
"""


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    runs = tmp_path_factory.mktemp("cmp") / "runs"
    ids = []
    for steps in (10, 20):
        p = tmp_path_factory.mktemp(f"plan{steps}") / "plan.yaml"
        p.write_text(plan(steps))
        out = launch(p, runs)
        assert out.returncode == 0, out.stdout + out.stderr
        ids.append(status(runs)["run"])
    assert ids[0] != ids[1]
    return runs, ids


def test_report_csv_and_latex(two_runs: tuple[Path, list[str]]) -> None:
    runs, (a, _) = two_runs
    out = cli("report", a, "--runs-dir", str(runs), "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = {r["metric"]: r for r in csv.DictReader(io.StringIO(out.stdout))}
    assert set(rows) == {"steps", "final loss"} and rows["steps"]["job"] == "train_a"
    assert int(rows["steps"]["value"]) == 10 and float(rows["final loss"]["value"]) == pytest.approx(1 / 11)
    assert (runs / a / "report" / "results.csv").read_text() == out.stdout

    tex = cli("report", a, "--runs-dir", str(runs), "--format", "latex")
    assert tex.returncode == 0, tex.stderr
    assert r"\begin{tabular}{lllrlll}" in tex.stdout and r"\toprule" in tex.stdout
    assert r"train\_a & train\_a (synthetic) & steps & 10 & - & - & - \\" in tex.stdout
    assert rf"\caption{{Results of run {a.replace('_', chr(92) + '_')}}}" in tex.stdout
    assert (runs / a / "report" / "results.tex").read_text() == tex.stdout

    md = (runs / a / "report" / "report.md").read_text()
    assert "[results.csv](results.csv)" in md and "![GPU utilisation and memory](gpus.png)" in md
    assert (runs / a / "report" / "gpus.png").stat().st_size > 10_000


def test_report_compare_two_runs(two_runs: tuple[Path, list[str]]) -> None:
    runs, (a, b) = two_runs
    out = cli("report", "--compare", a, b, "--runs-dir", str(runs))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"| job | metric | {a} | {b} | Δ {b} | judge | better |"
    assert "| train_a | steps | 10 | 20 | +10 | - | - |" in lines
    loss = next(line for line in lines if "| final loss |" in line)
    assert loss == f"| train_a | final loss | {1 / 11:.2f} | {1 / 21:.2f} | {1 / 21 - 1 / 11:.2f} | - | ↓ lower is better |"
    c = cli("report", "--compare", a, b, "--runs-dir", str(runs), "--format", "csv")
    rows = list(csv.reader(io.StringIO(c.stdout)))
    assert rows[0][:5] == ["job", "metric", a, b, f"Δ {b}"] and ["train_a", "steps", "10", "20", "10"] in \
        [r[:5] for r in rows[1:]]
    tex = cli("report", "--compare", a, b, "--runs-dir", str(runs), "--format", "latex")
    assert rf"$\Delta$ {b.replace('_', chr(92) + '_')}" in tex.stdout and r"train\_a & steps & 10 & 20 & +10" in tex.stdout
    js = json.loads(cli("report", "--compare", a, b, "--runs-dir", str(runs), "--format", "json").stdout)
    steps = next(r for r in js["rows"] if r["metric"] == "steps")
    assert js["runs"] == [a, b] and steps["values"] == [10, 20] and steps["deltas"] == [10] and steps["same_judge"]
    missing = cli("report", "--compare", a, "no-such-run", "--runs-dir", str(runs))
    assert missing.returncode == 2 and "no-such-run" in missing.stderr


def test_status_watch_shows_gpu_hours_and_eta(two_runs: tuple[Path, list[str]]) -> None:
    runs, (a, _) = two_runs
    st = status(runs, a)
    (att,) = st["jobs"][0]["attempts"]
    hours = (att["ended"] - att["started"]) * 2 / 3600
    out = cli("status", a, "--runs-dir", str(runs), "--watch")
    assert out.returncode == 0, out.stderr
    assert f"GPU-hours {hours:.3f}   run ETA -" in out.stdout
