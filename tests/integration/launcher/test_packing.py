"""Packing jobs onto shared GPUs by memory, end to end with real Ray fractional GPUs and the host
monitor (each job's resident memory stands in for its GPU memory on simulated GPUs):

- six 800 MiB jobs on 2 simulated 4 GiB GPUs (3,072 MiB usable each) start at once, three to a
  GPU, and no GPU's tenants ever held more than its capacity at any sample;
- one of them grows past its share at step 6: stopped as an OOM, retried on a whole GPU, while
  its two neighbours on that GPU run on undisturbed (one attempt each);
- a job whose need is unknown waits for a whole GPU; in a second run of the same plan, it is
  packed by the peak measured in the first.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from launcher.journal import Journal
from launcher.layout import RunDir
from launcher.memfiles import read_samples
from launcher.report import build, markdown
from launcher.report_sharing import held_per_second
from tests.integration.launcher.conftest import launch, status, write_plan

pytestmark = pytest.mark.integration

PLAN = """
name: packing
defaults:
  method: synthetic
  resources: {nodes: 1, gpus_per_node: 1, gpu_memory: 800MiB}
  params: {steps: 20, step_time: 0.25, host_mib: 300}
  retry: {max_restarts: 1, backoff: 0}
  hang: {startup: 60, step: 10}
jobs:
  p0: {}
  p1: {}
  p2: {}
  p3: {}
  p4: {}
  grower: {params: {host_grow_at_step: 6, host_grow_mib: 800}}
  unknown: {resources: {gpu_memory: null}, needs: [p0]}
"""
GPU_MIB = 4096


def attempts(run: Path) -> dict[str, list[dict]]:
    j = Journal(run / "run.db", readonly=True)
    try:
        return {r["name"]: [dict(a) for a in j.attempts(r["name"])] for r in j.jobs()}
    finally:
        j.close()


def gpu_of(a: dict) -> str:
    (p,) = json.loads(a["placement"])
    return p["gpus"][0]


def test_jobs_share_gpus_by_memory_and_one_that_outgrows_its_share_moves_to_a_whole_gpu(tmp_path: Path,
                                                                                        runs: Path) -> None:
    plan = write_plan(tmp_path, PLAN)
    out = launch(plan, runs, "--simulate-gpus", "2", "--simulate-gpu-memory", f"{GPU_MIB}MiB", timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = Path(status(runs)["dir"])
    att = attempts(run)

    packed = ["p0", "p1", "p2", "p3", "p4", "grower"]
    firsts = {n: att[n][0] for n in packed}
    # all six at once: each started before any of them ended
    assert max(a["started"] for a in firsts.values()) < min(a["ended"] for a in firsts.values())
    by_gpu = defaultdict(list)
    for n, a in firsts.items():
        by_gpu[gpu_of(a)].append(n)
    assert sorted(len(v) for v in by_gpu.values()) == [3, 3]

    # the grower: stopped as an OOM while sharing, then a whole GPU; its neighbours untouched
    g1, g2 = att["grower"]
    assert g1["failure"] == "oom" and "outgrew its GPU share" in g1["detail"] and g2["state"] == "succeeded"
    neighbours = [n for n in by_gpu[gpu_of(g1)] if n != "grower"]
    assert all(len(att[n]) == 1 and att[n][0]["state"] == "succeeded" for n in neighbours)
    j = Journal(run / "run.db", readonly=True)
    assert [d.kind for d in j.decisions("grower") if d.kind == "exclusive"] == ["exclusive"]
    j.close()
    # on its whole GPU nobody else ran beside it
    alone = gpu_of(g2)
    for n, a in att.items():
        for other in a:
            if (n, other["n"]) != ("grower", 2) and other["placement"] and gpu_of(other) == alone:
                assert other["ended"] <= g2["started"] or other["started"] >= g2["ended"], (n, other)

    # never over capacity: per GPU and sample time, the tenants' measured memory adds up to at most the GPU
    per_second = held_per_second({n: read_samples(run / "jobs" / n / "gpu_mem.csv") for n in att})
    assert per_second and max(per_second.values()) <= GPU_MIB

    # bin/report says who shared which GPU
    md = markdown(build(RunDir(run), plots=False))
    assert "## Shared GPUs" in md and md.count("| 3 (2400 MiB) |") == 2

    # the unknown one had a whole GPU; the same plan again packs it by what it measured
    (u,) = att["unknown"]
    assert u["state"] == "succeeded"
    out = launch(plan, runs, "--simulate-gpus", "2", "--simulate-gpu-memory", f"{GPU_MIB}MiB", timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    second = sorted(p for p in runs.iterdir() if p.is_dir() and p != run)[-1]
    log = (second / "driver.log").read_text()
    assert "unknown: packed, needs" in log and "(peak of earlier runs + margin)" in log
