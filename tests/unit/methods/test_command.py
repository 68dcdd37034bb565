"""The command wrapper in-process, around real child processes: what it passes on and what it reports."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from launcher import checkpoints, heartbeat
from launcher.atomic import read_json, write_json
from launcher.layout import JobDir
from launcher.spec import CheckpointSpec, JobFile, Resources, TrainingSpec
from methods import command
from methods.params import CommandParams


def job(tmp_path: Path, argv: list[str], attempt: int = 1, resume_from: str | None = None,
        ck: CheckpointSpec | None = None, launcher: str = "per_rank", resources: Resources | None = None) -> JobFile:
    params = CommandParams(argv=argv, cwd=str(tmp_path), launcher=launcher).model_dump()
    return JobFile(run_id="t", job="mine", method="command", params=params, model=None, data={},
                   training=TrainingSpec(), deepspeed=None, checkpoint=ck or CheckpointSpec(),
                   resources=resources or Resources(), job_dir=str(tmp_path / "mine"), attempt=attempt,
                   resume_from=resume_from)


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


def test_a_launcher_line_gets_the_nodes_shape_and_none_of_a_ranks_variables(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "NODE_RANK": "1",
                 "MASTER_ADDR": "198.18.0.2", "MASTER_PORT": "29511"}.items():
        monkeypatch.setenv(k, v)
    line = ["torchrun", "--nnodes", "{nnodes}", "--node_rank", "{node_rank}", "--nproc_per_node", "{nproc_per_node}",
            "--master_addr", "{master_addr}", "--master_port", "{master_port}", "train.py"]
    jf = job(tmp_path, line, launcher="single", resources=Resources(nodes=2, gpus_per_node=4))
    p = CommandParams.model_validate(jf.params)
    assert command.build_argv(p, jf, 1) == ["torchrun", "--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "4",
                                            "--master_addr", "198.18.0.2", "--master_port", "29511", "train.py"]
    env = command.script_env(p, jf, tmp_path / "hb.json")
    assert not set(command.RANK_VARS) & set(env)   # torchrun would otherwise read them as its own
    assert (env["NNODES"], env["NODE_RANK"], env["NPROC_PER_NODE"], env["MASTER_PORT"]) == ("2", "1", "4", "29511")
    # per rank, the script keeps torchrun's contract as the host set it
    per_rank = job(tmp_path, ["python", "t.py"], resources=Resources(nodes=2, gpus_per_node=4))
    env = command.script_env(CommandParams.model_validate(per_rank.params), per_rank, tmp_path / "hb.json")
    assert (env["RANK"], env["WORLD_SIZE"]) == ("1", "2") and "NPROC_PER_NODE" not in env


def test_the_script_gets_the_callers_path_and_pythonpath_not_the_launchers(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """bin/_bootstrap keeps the caller's PATH and PYTHONPATH before putting the venv first."""
    monkeypatch.setenv("PATH", "/repo/.venv/bin:/opt/lisa-env/bin:/usr/bin")
    monkeypatch.setenv("PYTHONPATH", "/repo")
    monkeypatch.delenv("SL_USER_PATH", raising=False)   # as under `python -m launcher`, not bin/
    jf = job(tmp_path, ["python", "train.py"])
    p = CommandParams.model_validate(jf.params)
    assert command.script_env(p, jf, tmp_path / "hb.json")["PATH"].startswith("/repo/.venv/bin")   # not from bin/
    monkeypatch.setenv("SL_USER_PATH", "/opt/lisa-env/bin:/usr/bin")
    monkeypatch.setenv("SL_USER_PYTHONPATH", "")
    env = command.script_env(p, jf, tmp_path / "hb.json")
    assert env["PATH"] == "/opt/lisa-env/bin:/usr/bin" and "PYTHONPATH" not in env
    monkeypatch.setenv("SL_USER_PYTHONPATH", "/opt/lisa")
    assert command.script_env(p, jf, tmp_path / "hb.json")["PYTHONPATH"] == "/opt/lisa"


def test_the_gpu_signal_reads_nvml_for_the_scripts_processes_only() -> None:
    from tests.unit.launcher.test_monitor import fake_pynvml
    script = [{"0": {"mem": (5000, 81920), "util": 87, "procs": [(101, 1000), (555, 300)]}},
              {"0": {"mem": (5000, 81920), "util": 87, "procs": [(101, 1000), (555, 900)]}},
              {"0": {"mem": (5800, 81920), "util": None, "procs": [(101, 1500), (555, 900)]}}]
    nv = fake_pynvml(script)
    nv.nvmlDeviceGetCount = lambda: 1
    gpu = command._Gpu(nv)
    readings = []
    for _ in script:
        nv.nvmlDeviceGetMemoryInfo("0")   # the stub's clock: one sample per memory query of GPU 0
        readings.append(gpu.read({101}))
    # the other user's 555 growing is not ours; our 101 growing is, with utilisation unsupported
    assert readings == [(1000, 87), (1000, 87), (1500, 0)]
    from methods.command_signals import Activity
    act = Activity(("gpu",), 0.0)
    assert [act.update(t, {"gpu": r}, 1.0) for t, r in enumerate(readings, 1)] == [True, False, True]
    assert command._Gpu(types.SimpleNamespace()).read({101}) is None   # no NVML: the signal is absent
