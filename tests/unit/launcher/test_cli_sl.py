"""`sl` / `python -m launcher`: help without the heavy imports or the venv, --version, exit codes,
completion, the shipped examples, --json results."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import cliargs, exitcodes, shipped, sl
from launcher.cliresult import Detached, KillResult
from tests.helpers import REPO

VENV_BIN = Path(sys.executable).parent


def _py(*args: str, cwd: Path, python: str = sys.executable, **env: str) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run([python, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=e)


def test_help_exits_0_and_lists_every_command_and_the_exit_statuses(tmp_path: Path) -> None:
    out = _py("-m", "launcher", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("launch", "status", "logs", "kill", "resume", "report", "cluster", "schema", "bench", "examples"):
        assert f"\n    {name} " in out.stdout
    assert "3 running" in out.stdout and "4 interrupted" in out.stdout and "register-python-argcomplete sl" in out.stdout


@pytest.mark.parametrize("argv", [["--help"], ["launch", "--help"], ["status", "-h"], ["kill", "--help"],
                                  ["resume", "--help"], ["cluster", "--help"], ["--version"], ["launch", "--version"]])
def test_help_and_version_import_neither_ray_torch_nor_the_launcher_body(argv: list[str], tmp_path: Path) -> None:
    code = ("import sys\nfrom launcher import sl\nrc = sl.main(sys.argv[1:])\n"
            "heavy = sorted(m for m in ('ray', 'torch', 'pydantic', 'rich', 'psutil', 'launcher.cli') if m in sys.modules)\n"
            "print('HEAVY', heavy)\nsys.exit(rc)\n")
    out = _py("-c", code, *argv, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    assert ("usage:" in out.stdout) or ("0." in out.stdout)


def test_help_answers_in_a_checkout_without_a_venv(tmp_path: Path) -> None:
    """bin/<cmd> --help in a fresh clone: bin/_quick answers with the system python; no .venv is built."""
    clone = tmp_path / "clone"
    for d in ("bin", "launcher"):
        shutil.copytree(REPO / d, clone / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", clone)
    base = Path(sys.base_prefix) / "bin" / "python3"   # the interpreter the venv was made from: no pydantic, no rich
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(base.parent), "/usr/bin", "/bin"])
    launch = subprocess.run([str(clone / "bin" / "launch"), "--help"], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=120)
    assert launch.returncode == 0, launch.stderr
    assert "--dry-run" in launch.stdout and "--detach" in launch.stdout
    logs = subprocess.run([str(clone / "bin" / "logs"), "--help"], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=120)
    assert logs.returncode == 0, logs.stderr
    version = subprocess.run([str(clone / "bin" / "status"), "--version"], cwd=tmp_path, capture_output=True,
                             text=True, env=env, timeout=120)
    assert version.returncode == 0 and sl.DIST in version.stdout
    assert not (clone / ".venv").exists()
    no_pydantic = subprocess.run([str(base), "-c", "import pydantic"], capture_output=True, env=env)
    if no_pydantic.returncode != 0:   # the point: where the base interpreter lacks the deps, logs' help says why
        assert "the full option list needs the environment" in logs.stdout


def test_version_is_the_installed_distribution_s(capsys: pytest.CaptureFixture[str]) -> None:
    assert sl.version() == importlib.metadata.version("safety-launcher")
    assert sl.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sl ({sl.DIST}) {sl.version()}"


def test_no_command_and_an_unknown_one_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert sl.main([]) == exitcodes.USAGE
    assert "usage: sl" in capsys.readouterr().err
    assert sl.main(["frobnicate"]) == exitcodes.USAGE
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("state,driver,code", [
    ("succeeded", None, 0), ("failed", None, 1), ("killed", None, 1), ("running", "alive", 3), ("pending", "alive", 3),
    ("running", None, 3), ("running", "gone", 4), ("pending", "gone", 4), ("no-such-state", None, 1),
])
def test_status_exit_status_for_each_run_state(state: str, driver: str | None, code: int) -> None:
    assert exitcodes.for_run(state, driver) == code


def test_stdlib_parsers_mirror_the_launcher_s_constants() -> None:
    from launcher import kill, status
    from launcher.scheduling import policy
    assert cliargs.ORDERS == policy.names()
    assert cliargs.FOLD_OVER == status.FOLD_OVER
    assert cliargs.FORCE_PATIENCE_S == kill.FORCE_PATIENCE_S


def test_resume_reads_the_argv_old_launches_recorded() -> None:
    """resume re-parses the recorded launch argv with today's parser."""
    args = cliargs.launch_parser().parse_args(["p.yaml", "--simulate-gpus", "4", "--no-dashboard", "--order", "fifo"])
    assert (args.simulate_gpus, args.no_dashboard, args.order, args.json) == (4, True, "fifo", False)


def _complete(line: str, tmp_path: Path) -> list[str]:
    out_file = tmp_path / "completions"
    sl_script = VENV_BIN / "sl"
    proc = subprocess.run([str(sl_script)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
                               "_ARGCOMPLETE_IFS": "\n", "_ARGCOMPLETE_STDOUT_FILENAME": str(out_file)})
    assert proc.returncode == 0, proc.stderr
    return out_file.read_text().split()


def test_completion_offers_commands_and_their_options(tmp_path: Path) -> None:
    assert set(_complete("sl s", tmp_path)) == {"status", "schema"}
    assert "--dry-run" in _complete("sl launch --dr", tmp_path)
    assert "--force" in _complete("sl kill --f", tmp_path)
    # The marker `register-python-argcomplete sl` looks for in the console script's module.
    check = subprocess.run([sys.executable, "-m", "argcomplete._check_console_script", str(VENV_BIN / "sl")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_examples_finds_the_shipped_plans_and_ds_configs(capsys: pytest.CaptureFixture[str]) -> None:
    assert sl.main(["examples", "--path", "smoke"]) == 0
    assert Path(capsys.readouterr().out.strip()) == REPO / "plans" / "smoke.yaml"
    assert sl.main(["examples"]) == 0
    out = capsys.readouterr().out
    assert "zero2" in out and "pipeline_synthetic.yaml" in out
    assert sl.main(["examples", "--path", "nope"]) == 2
    assert "no shipped plan 'nope'" in capsys.readouterr().err


def test_a_checkout_uses_the_top_level_folders_and_a_package_that_carries_them_its_own(tmp_path: Path) -> None:
    assert shipped.ds_configs_dir() == REPO / "ds_configs" and shipped.plans_dir() == REPO / "plans"
    assert shipped.ds_configs_dir(tmp_path) == tmp_path / "ds_configs"   # launcher/ has no ds_configs/ here


def test_launch_json_needs_detach(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sl.main(["launch", str(REPO / "plans" / "smoke.yaml"), "--json", "--runs-dir", str(tmp_path / "r")]) == 2
    assert "--json goes with --detach" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_json_results_have_stable_keys() -> None:
    d = json.loads(Detached("launch", "r1", "/runs/r1", 123, "/runs/r1/driver.out", "/runs").to_json())
    assert list(d) == ["action", "run", "dir", "driver_pid", "log", "runs_dir"]
    k = json.loads(KillResult("r1", None, True, "swept", 9, [3, 4], 0).to_json())
    assert list(k) == ["run", "job", "force", "outcome", "driver_pid", "swept_pids", "exit_code"]
    assert k["swept_pids"] == [3, 4] and k["job"] is None


def test_cluster_shows_the_simulated_local_node(capsys: pytest.CaptureFixture[str]) -> None:
    assert sl.main(["cluster", "--simulate-gpus", "4", "--gpu-type", "H20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"source": "this machine, simulated GPUs",
                                                   "nodes": [{"id": "local", "gpus": 4, "gpu_type": "H20"}]}
    assert sl.main(["cluster", "--simulate-gpus", "2"]) == 0
    assert capsys.readouterr().out.startswith("1 node (2 GPUs)  [this machine, simulated GPUs]")
