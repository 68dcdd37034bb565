"""The job the host-failure tests run, and how they find and break the hosts its ranks are on."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.helpers import DATA
from tests.integration.cluster import netns
from tests.integration.launcher.conftest import write_plan

JOB = "two_hosts"


def two_host_plan(tmp: Path, steps: int, every: int) -> Path:
    """A 2-node x 1-rank ZeRO-2 SFT job, long enough to be broken mid-run, with the supervisor's
    defaults as users get them (hang timeouts learned, at least a minute)."""
    return write_plan(tmp, f"""
name: hosts
jobs:
  {JOB}:
    method: sft
    model: {{tiny: llama}}
    data: {{train: {DATA / 'sst2_mini.jsonl'}}}
    deepspeed: zero2
    resources: {{nodes: 2, gpus_per_node: 1}}
    training: {{max_steps: {steps}, batch_size: 2, max_length: 96}}
    checkpoint: {{every: {every}, keep: 2}}
""")


def job_of(st: dict) -> dict:
    """The job's entry in `sl status --json`."""
    (j,) = [j for j in st["jobs"] if j["name"] == JOB]
    return j


def job_dir(runs: Path, run: str) -> Path:
    return runs / run / "jobs" / JOB


def seen(runs: Path, run: str) -> list[dict]:
    """What each rank of each attempt was given (methods/__main__.py record_seen)."""
    return [json.loads(p.read_text()) for p in sorted((job_dir(runs, run) / "seen").glob("rank-*.json"))]


def host_of_rank(cluster, runs: Path, run: str, rank: int, attempt: int) -> netns.Host:
    (s,) = [s for s in seen(runs, run) if s["rank"] == rank and s["attempt"] == attempt]
    ip = cluster.node_ips()[s["node_id"]]
    (host,) = [h for h in cluster.bed.hosts if h.ip == ip]
    return host


def kill_raylet(host: netns.Host) -> int:
    """SIGKILL the raylet of a host (found among the processes of that host's namespace only)."""
    for pid in host.pids():
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except FileNotFoundError:
            continue
        if argv0.endswith(b"/raylet"):
            os.kill(pid, signal.SIGKILL)
            return pid
    raise AssertionError(f"no raylet among {host.ns}'s processes")
