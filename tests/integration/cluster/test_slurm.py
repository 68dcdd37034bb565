"""cluster/slurm.sbatch under a real Slurm (slurmctld and two slurmd on this machine, slurm_bed.py):
Ray comes up inside the allocation, one step per node, the plan runs across both nodes, and
nothing of Ray outlives the job; USR1 (what `--signal=B:USR1@300` sends before the walltime)
stops the run resumably and requeues the job, whose second start resumes the same run from its
checkpoint."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, free_port
from tests.integration.cluster import slurm_bed

pytestmark = [pytest.mark.integration, pytest.mark.root]

SBATCH = REPO / "cluster" / "slurm.sbatch"

ACROSS = """
name: slurm-across
jobs:
  both:
    method: synthetic
    resources: {nodes: 2, gpus_per_node: 1}
    params: {steps: 6, step_time: 0.2}
    checkpoint: {every: 3, keep: 2}
"""

LONG = """
name: slurm-requeue
jobs:
  train:
    method: synthetic
    resources: {nodes: 1, gpus_per_node: 1}
    params: {steps: 60, step_time: 0.5}
    checkpoint: {every: 5, keep: 2}
    hang: {startup: 120, step: 30}
"""


@pytest.fixture(scope="module")
def slurm():
    why = slurm_bed.why_not()
    if why:
        pytest.skip(f"no Slurm test bed: {why}")
    bed = slurm_bed.start(nodes=2, cpus=2)
    try:
        yield bed
    finally:
        left = bed.teardown()
        assert not left, f"processes that would not die after the Slurm bed: {left}"


def _env(bed: slurm_bed.SlurmBed) -> dict[str, str]:
    """What the job runs with: logical GPUs (the nodes declare none to Slurm), a token and state dir
    of the test's own, the head on a free port."""
    return bed.env(SL_RAY_TOKEN=str(bed.root / "secrets" / "ray_token"), SL_SLURM_GPUS="1", SL_RAY_DASHBOARD="0",
                   SL_RAY_PORT=str(free_port()), SL_CLUSTER_STATE=str(bed.root / "s"), SL_SLURM_WAIT_S="180",
                   RAY_USAGE_STATS_ENABLED="0")


def _submit(bed: slurm_bed.SlurmBed, plan: Path, runs: Path) -> subprocess.Popen:
    """`sbatch --wait` from the repository's root, overriding the script's GPU-sized #SBATCH lines."""
    argv = ["sbatch", "--parsable", "--wait", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=2",
            "--gpus-per-node=0", "--time=15", f"--output={bed.root}/job-%j.out", str(SBATCH), str(plan),
            "--runs-dir", str(runs)]
    return subprocess.Popen(argv, cwd=REPO, env=_env(bed), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _job_id(sbatch: subprocess.Popen) -> str:
    line = sbatch.stdout.readline().strip()   # --parsable: the id, printed at submission
    assert line.split(";")[0].isdigit(), line + sbatch.stdout.read()
    return line.split(";")[0]


def _finish(bed: slurm_bed.SlurmBed, sbatch: subprocess.Popen, job: str, timeout: float) -> str:
    """sbatch's exit status once the job (requeues included) is over, and the job's output."""
    try:
        rc = sbatch.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        bed.run("scancel", job)
        sbatch.wait(timeout=120)
        rc = None
    out = (bed.root / f"job-{job}.out").read_text(errors="replace") if (bed.root / f"job-{job}.out").exists() else ""
    assert rc == 0, f"sbatch --wait: {rc}\n{out[-6000:]}"
    return out


def _status(runs: Path, run: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "launcher", "status", run, "--runs-dir", str(runs), "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip(), out.stderr
    return json.loads(out.stdout)


def _nothing_left(bed: slurm_bed.SlurmBed, job: str) -> None:
    """No process of the job (Ray's daemons, the driver, the ranks) and no bin/cluster record left."""
    deadline = time.monotonic() + 30   # slurmstepd may still be tidying when sbatch --wait returns
    while (left := bed.job_processes(job)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, left
    assert not list((bed.root / "s").rglob("node.json"))


@pytest.mark.timeout(600)
def test_a_plan_runs_on_ray_across_both_slurm_nodes(slurm, tmp_path) -> None:
    plan, runs = tmp_path / "plan.yaml", tmp_path / "runs"
    plan.write_text(ACROSS)
    sbatch = _submit(slurm, plan, runs)
    job = _job_id(sbatch)
    out = _finish(slurm, sbatch, job, 420)
    st = _status(runs, f"slurm-{job}")
    assert st["state"] == "succeeded", out[-4000:]
    (attempt,) = st["jobs"][0]["attempts"]
    assert len({p["node"] for p in attempt["placement"]}) == 2   # a rank on each Slurm node's Ray
    assert "2 node(s) alive" in out
    assert stat.S_IMODE((slurm.root / "secrets" / "ray_token").stat().st_mode) == 0o600
    _nothing_left(slurm, job)


@pytest.mark.timeout(600)
def test_usr1_requeues_the_job_and_it_resumes_the_run(slurm, tmp_path) -> None:
    plan, runs = tmp_path / "plan.yaml", tmp_path / "runs"
    plan.write_text(LONG)
    sbatch = _submit(slurm, plan, runs)
    job = _job_id(sbatch)
    run = f"slurm-{job}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:   # until a checkpoint is on disk, so there is something to resume from
        if list((runs / run / "jobs" / "train" / "checkpoints").glob("checkpoint-*")) and \
                _status(runs, run)["jobs"][0]["step"] >= 12:
            break
        assert sbatch.poll() is None, sbatch.stdout.read()
        time.sleep(1)
    else:
        pytest.fail(f"no checkpoint within 300s: {(slurm.root / f'job-{job}.out').read_text(errors='replace')[-4000:]}")
    signalled = slurm.run("scancel", "--signal=USR1", "--batch", job)   # what --signal=B:USR1@300 sends
    assert signalled.returncode == 0, signalled.stderr
    out = _finish(slurm, sbatch, job, 420)
    st = _status(runs, run)
    assert st["state"] == "succeeded", out[-4000:]
    first, second = st["jobs"][0]["attempts"]
    assert first["state"] == "killed" and first["detail"] == "the driver was asked to stop"
    assert second["state"] == "succeeded" and second["resumed_from"] and second["start_step"] >= 5, second
    assert "restart 1" in out and "bin/resume" in out
    shown = slurm.run("scontrol", "show", "job", job).stdout
    assert "Restarts=1" in shown, shown
    _nothing_left(slurm, job)
