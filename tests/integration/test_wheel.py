"""The wheel, installed (not editable) into a fresh venv, runs plans outside the repo.

The wheel is built from a copy of the checkout's files, installed with --no-deps into a new venv
whose only link to this machine's installed dependencies (torch, ray, ...; there is no network to
fetch them) is a .pth line to the project venv's site-packages: the launcher package, its
ds_configs and example plans come from the wheel alone, checked by where `launcher` is imported from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.integration

PLAN = """
name: wheel-check
jobs:
  train:
    method: synthetic
    resources: {nodes: 1, gpus_per_node: 2}
    params: {steps: 60, step_time: 0.2}
    checkpoint: {every: 5, keep: 2}
    hang: {startup: 120, step: 30}
"""


def _checkout_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _checkout_copy(tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("safety_launcher-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the .pth line makes the checkout's editable install of the same version
    # visible, and pip would skip the wheel as "already installed" (it did under bin/test, whose
    # PYTHONPATH is the checkout). Without PYTHONPATH, as a user's shell has it.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "--ignore-installed", "-q", str(wheel)], check=True, capture_output=True, timeout=300,
                   env=_env(venv))
    return venv


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SL_RUNS_DIR")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0")
    return env


def _sl(venv: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "sl"), *args], cwd=cwd, env=_env(venv), capture_output=True, text=True,
                          timeout=timeout)


def test_installed_launcher_comes_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import launcher; print(launcher.__file__)"],
                           cwd=tmp_path, env=_env(installed), capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(installed), where
    version = _sl(installed, tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "sl (safety-launcher) 0.1.0"


def test_installed_smoke_plan_dry_runs_with_the_packaged_zero2(installed: Path, tmp_path: Path) -> None:
    smoke = _sl(installed, tmp_path, "examples", "--path", "smoke")
    assert smoke.returncode == 0, smoke.stderr
    plan = Path(smoke.stdout.strip())
    assert plan.is_relative_to(installed) and plan.is_file()
    out = _sl(installed, tmp_path, "launch", str(plan), "--dry-run", "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stdout + out.stderr
    ds = next(line for line in out.stdout.splitlines() if "deepspeed: ZeRO-2 from" in line).split(" from ")[1]
    assert Path(ds).is_relative_to(installed) and Path(ds).name == "zero2.json"
    assert '"train_batch_size": 4' in out.stdout and str(plan.parent / "data" / "sst2_mini.jsonl") in out.stdout
    assert not (tmp_path / "runs").exists()


def _wait_status(venv: Path, cwd: Path, runs: Path, run: str, done, timeout: float = 240) -> tuple[int, dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = _sl(venv, cwd, "status", run, "--runs-dir", str(runs), "--json", timeout=60)
        st = json.loads(out.stdout) if out.stdout.strip() else {}
        if st and done(out.returncode, st):
            return out.returncode, st
        time.sleep(0.5)
    raise AssertionError(f"timed out; last status {out.returncode}: {out.stdout[-2000:]} {out.stderr[-2000:]}")


def test_installed_run_detach_kill_resume_with_json_and_exit_statuses(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_text(PLAN)
    runs = tmp_path / "runs"
    launched = _sl(installed, tmp_path, "launch", "plan.yaml", "--detach", "--json", "--no-dashboard",
                   "--runs-dir", str(runs), timeout=180)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    d = json.loads(launched.stdout)
    assert d["action"] == "launch" and Path(d["dir"]) == (runs / d["run"]).resolve() and d["driver_pid"] > 0
    run = d["run"]
    code, st = _wait_status(installed, tmp_path, runs, run, lambda c, s: (s["jobs"][0]["step"] or 0) >= 5)
    assert code == 3 and st["state"] == "running"   # running: exit 3

    killed = _sl(installed, tmp_path, "kill", run, "--runs-dir", str(runs), "--json")
    assert killed.returncode == 0, killed.stdout + killed.stderr
    k = json.loads(killed.stdout)
    assert (k["run"], k["outcome"], k["exit_code"], k["driver_pid"]) == (run, "killed", 0, d["driver_pid"])
    code, st = _wait_status(installed, tmp_path, runs, run, lambda c, s: c != 3)
    assert (code, st["state"]) == (1, "killed")

    resumed = _sl(installed, tmp_path, "resume", run, "--runs-dir", str(runs), "--detach", "--json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    r = json.loads(resumed.stdout)
    assert (r["action"], r["run"]) == ("resume", run) and r["driver_pid"] != d["driver_pid"]
    code, st = _wait_status(installed, tmp_path, runs, run,
                            lambda c, s: s["state"] != "killed" and c not in (3,), timeout=300)
    assert (code, st["state"]) == (0, "succeeded"), json.dumps(st)[-2000:]
    train = st["jobs"][0]
    assert train["step"] == 60 and len(train["attempts"]) >= 2
    # The ranks ran: the agent starts them from the installed package root (the new venv's site-packages).
    rank_log = (runs / run / "jobs" / "train" / "logs" / "attempt-1" / "rank-0.log").read_text()
    assert "[synthetic]" in rank_log
