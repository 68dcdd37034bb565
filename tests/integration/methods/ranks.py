"""Rank processes for the method integration tests: started without waiting (a test may kill one),
and a run that ends as soon as one rank fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.layout import JobDir
from launcher.spec import JobFile
from tests.helpers import REPO, RankRun, free_port


def start_ranks(job_file: Path, world: int, extra_env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """`python -m methods JOB.json` once per rank, each in its own session, as a node agent starts them."""
    job = JobFile.model_validate_json(job_file.read_text())
    logs = JobDir(Path(job.job_dir)).attempt_logs(job.attempt)
    logs.mkdir(parents=True, exist_ok=True)
    port, procs = free_port(), []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "",
               "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
        with open(logs / f"rank-{rank}.log", "wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "methods", str(job_file)], cwd=REPO, env=env,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def kill_all(procs: list[subprocess.Popen]) -> list[int]:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    return [p.wait() for p in procs]


def run_ok(job_file: Path, world: int, timeout: float = 300, extra_env: dict[str, str] | None = None) -> RankRun:
    """Like tests.helpers.run_ranks, but a failing rank ends the attempt at once (its peers would wait
    in a collective until the timeout), and a rendezvous port taken between free_port() and bind
    (other test runs share the machine) is retried on a fresh port."""
    run = None
    for _ in range(3):
        start = time.monotonic()
        procs = start_ranks(job_file, world, extra_env)
        try:
            while any(p.poll() is None for p in procs) and not any(p.poll() not in (None, 0) for p in procs):
                if time.monotonic() - start > timeout:
                    break
                time.sleep(0.2)
        finally:
            codes = kill_all(procs)
        job = JobFile.model_validate_json(job_file.read_text())
        logs = [JobDir(Path(job.job_dir)).rank_log(job.attempt, r) for r in range(world)]
        run = RankRun(codes=codes, logs=logs, wall_s=time.monotonic() - start)
        if codes == [0] * world or "EADDRINUSE" not in run.tail(200):
            return run
    assert run is not None
    return run
