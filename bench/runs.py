"""Running the real launcher from a benchmark: `python -m launcher launch ...` as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.results import REPO


def env() -> dict[str, str]:
    """This interpreter's environment with the repository importable (as bin/_bootstrap sets it)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    e.setdefault("RAY_USAGE_STATS_ENABLED", "0")   # no network here; Ray would try to report
    return e


@dataclass
class Launched:
    run_dir: Path
    wall_s: float          # the whole command: Ray start, the jobs, shutdown
    returncode: int
    output: str


def launch(plan: Path, runs: Path, run_id: str, *extra: str, timeout: float = 900) -> Launched:
    argv = [sys.executable, "-m", "launcher", "launch", str(plan), "--runs-dir", str(runs), "--no-dashboard",
            "--run-id", run_id, *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # TERM first: the driver then kills its jobs and shuts its local Ray down; KILL would orphan them.
        proc.terminate()
        try:
            proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise RuntimeError(f"launch of {plan.name} still running after {timeout:.0f} s; stopped") from None
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"launch of {plan.name} exited {proc.returncode}: {output[-1500:]}")
    return Launched(runs / run_id, wall, proc.returncode, output)
