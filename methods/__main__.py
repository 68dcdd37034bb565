"""Rank entry point: `python -m methods JOB.json`.

Started by a node agent with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and
CUDA_VISIBLE_DEVICES set; reads the job file, records what this rank saw, runs the method.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from launcher.contract import write_json, JobDir, JobFile
from methods.gpu_share import limit_to_share
from methods.registry import METHODS


def rank_env() -> dict[str, int | str]:
    return {
        "rank": int(os.environ.get("RANK", "0")),
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "master_addr": os.environ.get("MASTER_ADDR", "127.0.0.1"),
        "master_port": os.environ.get("MASTER_PORT", ""),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "node_id": os.environ.get("SL_NODE_ID", ""),
    }


def record_seen(job: JobFile) -> None:
    """What this rank was given: lets tests (and people) check placement from the rank's own view."""
    env = rank_env()
    seen = {**env, "pid": os.getpid(), "host": socket.gethostname(), "attempt": job.attempt, "time": time.time()}
    write_json(JobDir(Path(job.job_dir)).seen / f"rank-{env['rank']}.attempt-{job.attempt}.json", seen)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m methods JOB.json", file=sys.stderr)
        return 2
    job = JobFile.model_validate(json.loads(Path(argv[0]).read_text()))
    info = METHODS.get(job.method)
    if info is None:
        print(f"unknown method {job.method!r}; known: {sorted(METHODS)}", file=sys.stderr)
        return 2
    record_seen(job)
    limit_to_share()
    return int(info.runner()(job) or 0)


if __name__ == "__main__":
    sys.exit(main())
