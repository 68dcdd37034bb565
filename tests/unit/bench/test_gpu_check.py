"""The GPU check kit where no GPU is: its plans validate, it says it checked nothing, and its
checks judge hand-made runs right (the rows it would print on a GPU host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import gpu_check
from launcher.journal import Decision, Journal
from launcher.layout import RunDir
from launcher.memfiles import PeakRow, write_peaks
from launcher.plan import load_plan
from launcher.resources import ClusterShape

TOTAL = 80_000.0


@pytest.mark.parametrize("text", [gpu_check.train_plan(), gpu_check.synthetic_plan(TOTAL), gpu_check.kill_plan()])
def test_the_kit_plans_validate_on_a_one_gpu_node(tmp_path: Path, text: str) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    plan = load_plan(path, cluster=ClusterShape.single(1))
    assert all(j.config.resources.world_size == 1 for j in plan.jobs.values())


def test_without_cuda_it_says_so_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main([]) == 0
    assert "no CUDA GPU here" in capsys.readouterr().out


def synthetic_run(tmp_path: Path, oom_decided: bool, overlap: float) -> Path:
    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    j = Journal(rd.db)
    j.create_run("run", "p.yaml", {}, 1, 1.0, "h")
    for i, n in enumerate(("oom", "share_a", "share_b")):
        j.add_job(n, n, "synthetic", [], 1, i)
    j.start_attempt("oom", 1, [], None, 0, None)
    j.end_attempt("oom", 1, "failed", "oom", {0: 1}, 0)
    j.start_attempt("oom", 2, [], None, 0, None)
    j.end_attempt("oom", 2, "succeeded", None, {0: 0}, 20)
    if oom_decided:
        j.record_decision(Decision("oom", "micro_batch", {"batch_size": 2, "grad_accum": 2}))
    for n, (start, end) in {"share_a": (10.0, 20.0), "share_b": (20.0 - overlap, 30.0)}.items():
        j.start_attempt(n, 1, [], None, 0, None)
        j.end_attempt(n, 1, "succeeded", None, {0: 0}, 40)
        j.db.execute("UPDATE attempts SET started=?, ended=? WHERE job=?", (start, end, n))
    j.db.commit()
    for n in ("oom", "share_a", "share_b"):
        j.set_job(n, state="succeeded")
    j.close()
    rd.job("oom").root.mkdir(parents=True, exist_ok=True)
    write_peaks(rd.job("oom").peak_mem_csv, [PeakRow("n", "h", "nvml", 2, "0", peak_mib=0.6 * TOTAL)])
    return rd.root


def test_the_oom_and_sharing_rows_pass_on_a_run_that_did_it(tmp_path: Path) -> None:
    oom, share = gpu_check.check_synthetic(synthetic_run(tmp_path, True, 0.0), TOTAL)
    assert oom.ok and "0.60 of the GPU" in oom.measured
    assert share.ok and "overlap 0.0 s" in share.measured


def test_no_batch_decision_or_an_overlap_fails_its_row(tmp_path: Path) -> None:
    oom, share = gpu_check.check_synthetic(synthetic_run(tmp_path, False, 2.0), TOTAL)
    assert not oom.ok and not share.ok
    assert "NO" in gpu_check.table([oom, share])


def test_readmes_command_says_no_gpu_and_exits_0() -> None:
    import subprocess

    from tests.helpers import REPO
    out = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "nothing to check" in out.stdout
