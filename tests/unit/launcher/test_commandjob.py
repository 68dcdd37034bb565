"""Plan checks of command jobs: where they run, that the script is there, the checkpoint keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launcher.plan import PlanError, load_plan
from launcher.resources import ClusterShape, NodeShape
from tests.helpers import REPO, fake_lisa_checkout


def write(tmp_path: Path, job: str) -> Path:
    (tmp_path / "train.py").write_text("print('hi')\n")
    p = tmp_path / "plan.yaml"
    p.write_text("jobs:\n  mine:\n    method: command\n" + job)
    return p


def test_a_script_next_to_the_plan_runs_there(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, "    params: {argv: [python, train.py, --out, '{dir}/out']}\n"),
                     cluster=ClusterShape.single(2))
    params = plan.jobs["mine"].method_params
    assert params["cwd"] == str(tmp_path.resolve()) and params["argv"][-1] == "{dir}/out"
    assert params["signals"] == ["progress", "output", "files", "cpu", "gpu", "heartbeat"]


def test_a_launcher_line_is_one_process_per_node_and_a_script_one_per_gpu(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, "    params: {argv: [python, train.py]}\n    resources: {nodes: 2, gpus_per_node: 4}\n"
                                     "  line:\n    method: command\n    params: {argv: [python, -m, torch.distributed.run, train.py], launcher: single}\n"
                                     "    resources: {nodes: 2, gpus_per_node: 4}\n"), cluster=ClusterShape((NodeShape("a", 4, None), NodeShape("b", 4, None))))
    assert plan.jobs["mine"].ranks_per_node == 4 and plan.jobs["line"].ranks_per_node == 1


def test_a_missing_script_or_program_is_named_with_the_fix(problems) -> None:   # type: ignore[no-untyped-def]
    got = {p.key: p.message for p in problems("jobs:\n  mine:\n    method: command\n"
                                              "    params: {argv: [python, trian.py]}\n")}
    assert "script 'trian.py' not found" in got["jobs.mine.params.argv"]
    got = {p.key: p.message for p in problems("jobs:\n  mine:\n    method: command\n"
                                              "    params: {argv: [no-such-program-here, x]}\n")}
    assert "neither on PATH nor an executable file" in got["jobs.mine.params.argv"]


def test_checkpoint_keys_of_command_jobs(problems) -> None:   # type: ignore[no-untyped-def]
    got = [(p.key, p.message) for p in problems(
        "jobs:\n  a: {method: synthetic, checkpoint: {glob: 'out/checkpoint-*'}}\n"
        "  b: {method: command, params: {argv: [python, -c, pass]}, checkpoint: {resume_arg: [--resume]}}\n")]
    assert [k for k, _ in got] == ["jobs.a.checkpoint.glob", "jobs.b.checkpoint.resume_arg",
                                   "jobs.b.checkpoint.resume_arg"]
    assert got[0][1].startswith("only command jobs take checkpoint.glob")
    assert "needs checkpoint.glob" in got[1][1] and "no {checkpoint} in it" in got[2][1]


def test_the_shipped_lisa_plan_runs_the_official_scripts_in_a_checkout(tmp_path: Path) -> None:
    fake_lisa_checkout(tmp_path)
    plan = load_plan(REPO / "plans" / "lisa_official_command.yaml", sets=[f"defaults.params.root={tmp_path}"],
                     cluster=ClusterShape.single(2))
    jobs = plan.jobs
    assert set(jobs) == {"stage1_align", "stage1_hs", "stage1_hs_judge", "lisa", "lisa_hs", "lisa_hs_judge", "lisa_fa"}
    assert jobs["lisa_hs"].method_params["cwd"] == str(tmp_path / "poison" / "evaluation")
    assert "${stage1_align.dir}/lora" in jobs["lisa_hs"].method_params["argv"]
    assert jobs["lisa_fa"].needs == ("stage1_align", "lisa")


def test_every_flag_the_shipped_lisa_plan_passes_is_one_the_official_script_takes(tmp_path: Path) -> None:
    """The stand-ins parse the official scripts' flags (tests.helpers.LISA_FLAGS): an unknown flag
    is argparse's exit 2 there, as it would be in the real checkout."""
    fake_lisa_checkout(tmp_path)
    plan = load_plan(REPO / "plans" / "lisa_official_command.yaml", sets=[f"defaults.params.root={tmp_path}"],
                     cluster=ClusterShape.single(2))
    for name, job in plan.jobs.items():
        p = job.method_params
        out = subprocess.run([sys.executable, *p["argv"][1:]], cwd=p["cwd"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{name}: {out.stderr}"


def test_the_shipped_lisa_plan_without_a_checkout_says_where_to_point_it(problems) -> None:   # type: ignore[no-untyped-def]
    with pytest.raises(PlanError) as e:
        load_plan(REPO / "plans" / "lisa_official_command.yaml", cluster=ClusterShape.single(2))
    msgs = {p.key: p.message for p in e.value.problems}
    assert "--set defaults.params.root=" in msgs["jobs.stage1_align.params.root"]


def test_readmes_lisa_command_line_dry_runs_against_a_checkout(tmp_path: Path) -> None:
    fake_lisa_checkout(tmp_path)
    out = subprocess.run([sys.executable, "-m", "launcher", "launch", "plans/lisa_official_command.yaml",
                          "--set", f"defaults.params.root={tmp_path}", "--dry-run", "--runs-dir", str(tmp_path / "runs")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "lisa_hs_judge" in out.stdout


def test_a_command_job_without_a_command_is_refused(problems) -> None:   # type: ignore[no-untyped-def]
    got = {p.key: p.message for p in problems("jobs:\n  mine: {method: command}\n")}
    assert got["jobs.mine.params.argv"].startswith("no command: give it as a list")
