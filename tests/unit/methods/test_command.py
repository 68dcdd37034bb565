"""The command wrapper in-process, around real child processes: what it passes on and what it reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from launcher import checkpoints, heartbeat
from launcher.atomic import read_json, write_json
from launcher.layout import JobDir
from launcher.spec import CheckpointSpec, JobFile, Resources, TrainingSpec
from methods import command
from methods.params import CommandParams


def job(tmp_path: Path, argv: list[str], attempt: int = 1, resume_from: str | None = None,
        ck: CheckpointSpec | None = None) -> JobFile:
    params = CommandParams(argv=argv, cwd=str(tmp_path)).model_dump()
    return JobFile(run_id="t", job="mine", method="command", params=params, model=None, data={},
                   training=TrainingSpec(), deepspeed=None, checkpoint=ck or CheckpointSpec(), resources=Resources(),
                   job_dir=str(tmp_path / "mine"), attempt=attempt, resume_from=resume_from)


@pytest.fixture(autouse=True)
def rank0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")


def test_argv_gets_the_job_dir_and_rank_and_the_resume_flag_for_the_pointed_checkpoint(tmp_path: Path) -> None:
    jd = JobDir(tmp_path / "mine")
    ck = jd.root / "out" / "checkpoint-4"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text("{}")
    ptr = jd.checkpoints / "checkpoint-4"
    write_json(ptr / "source.json", {"path": str(ck), "step": 4})
    checkpoints.mark_complete(ptr, 4)
    spec = CheckpointSpec(glob="out/checkpoint-*", resume_arg=["--resume_from_checkpoint", "{checkpoint}"])
    jf = job(tmp_path, ["python", "t.py", "--out", "{dir}/out", "--rank={rank}"], attempt=2, resume_from=str(ptr), ck=spec)
    assert command.build_argv(CommandParams.model_validate(jf.params), jf, 0) == [
        "python", "t.py", "--out", f"{jd.root}/out", "--rank=0", "--resume_from_checkpoint", str(ck)]


def test_a_script_that_succeeds_leaves_heartbeat_signals_and_result(tmp_path: Path) -> None:
    code = "import time\nfor i in range(1, 4):\n    print(f'step {i}/3', flush=True); time.sleep(0.6)\n"
    jf = job(tmp_path, [sys.executable, "-c", code])
    assert command.run(jf) == 0
    jd = JobDir(Path(jf.job_dir))
    hb = heartbeat.read(jd.heartbeat(0))
    assert (hb.phase, hb.step, hb.total_steps) == ("done", 3, 3) and hb.progress >= 1
    assert set(hb.signals) == {"progress", "output", "files", "cpu", "gpu", "heartbeat"}
    assert read_json(jd.result)["status"] == "succeeded" and read_json(jd.result)["metrics"]["steps"] == 3


def test_the_scripts_exit_code_and_a_missing_program_are_passed_on(tmp_path: Path) -> None:
    assert command.run(job(tmp_path, [sys.executable, "-c", "import sys; sys.exit(3)"])) == 3
    assert command.run(job(tmp_path, ["/no/such/program"])) == 127
    assert not JobDir(tmp_path / "mine").result.exists()
