"""Makespan of a random DAG of synthetic jobs on a simulated 4-node x 4-GPU Ray cluster.

    PYTHONPATH=. .venv/bin/python bench/scheduling.py [--jobs 48] [--seed 0] [--json OUT]

Runs the same plan twice through the real launcher (--address of a ray.cluster_utils.Cluster):
critical-path order (ours) and FIFO plan order. Reports, from the journals of those runs:
makespan / lower bound, where lower bound = max(total GPU-time / GPUs, critical path) over the
measured job durations, and the one-after-another time the seed's one-click scripts take
(the sum of the same measured durations). It reports; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from launcher.graph import JobGraph
from launcher.journal import Journal

REPO = Path(__file__).resolve().parents[1]
NODES, GPUS = 4, 4


def random_plan(n: int, seed: int) -> dict[str, Any]:
    """Layered random DAG: each job needs 0-2 earlier jobs, takes 1-4 GPUs and 2-8 s."""
    rng = random.Random(seed)
    jobs: dict[str, Any] = {}
    names: list[str] = []
    for i in range(n):
        name = f"j{i:03d}"
        needs = rng.sample(names[-12:], k=min(len(names[-12:]), rng.choice([0, 0, 1, 1, 2]))) if names else []
        steps = rng.randint(10, 40)
        jobs[name] = {"params": {"steps": steps, "step_time": 0.2}, "needs": needs,
                      "resources": {"gpus_per_node": rng.choice([1, 1, 2, 2, 3, 4])}}
        names.append(name)
    return {"name": "sched-bench", "defaults": {"method": "synthetic", "checkpoint": {"every": 1000}}, "jobs": jobs}


def run_plan(plan: Path, runs: Path, address: str, order: str) -> Path:
    out = subprocess.run([sys.executable, "-m", "launcher", "launch", str(plan), "--address", address,
                          "--runs-dir", str(runs), "--no-dashboard", "--order", order, "--run-id", f"bench-{order}"],
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{order} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return runs / f"bench-{order}"


def measure(run_dir: Path) -> dict[str, Any]:
    j = Journal(run_dir / "run.db", readonly=True)
    try:
        att = {a["job"]: a for a in j.attempts()}
        needs = {r["name"]: tuple(json.loads(r["needs"])) for r in j.jobs()}
        gpus = {r["name"]: r["world_size"] for r in j.jobs()}
    finally:
        j.close()
    dur = {n: a["ended"] - a["started"] for n, a in att.items()}
    makespan = max(a["ended"] for a in att.values()) - min(a["started"] for a in att.values())
    area = sum(dur[n] * gpus[n] for n in dur) / (NODES * GPUS)
    cp = max(JobGraph(needs).critical_path(dur).values())
    return {"makespan_s": makespan, "lower_bound_s": max(area, cp), "gpu_time_bound_s": area,
            "critical_path_s": cp, "serial_s": sum(dur.values()), "jobs": len(dur)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 32, "num_gpus": GPUS, "include_dashboard": False})
    for _ in range(NODES - 1):
        cluster.add_node(num_cpus=32, num_gpus=GPUS)
    cluster.wait_for_nodes()
    results: dict[str, Any] = {"cluster": f"{NODES} nodes x {GPUS} GPUs (simulated)", "jobs": args.jobs, "seed": args.seed}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            plan = Path(tmp) / "plan.yaml"
            plan.write_text(yaml.safe_dump(random_plan(args.jobs, args.seed)))
            for order in ("critical-path", "fifo"):
                t0 = time.time()
                results[order] = measure(run_plan(plan, Path(tmp) / "runs", cluster.address, order))
                results[order]["wall_s"] = time.time() - t0
    finally:
        cluster.shutdown()
    ours, fifo = results["critical-path"], results["fifo"]
    lb = ours["lower_bound_s"]
    print(f"scheduling: {args.jobs} synthetic jobs (1-4 GPUs, 2-8 s), {results['cluster']}")
    print(f"{'':24}{'makespan s':>12}{'/ lower bound':>15}")
    print(f"{'ours (critical path)':24}{ours['makespan_s']:12.1f}{ours['makespan_s'] / lb:15.2f}   target <= 1.10")
    print(f"{'FIFO plan order':24}{fifo['makespan_s']:12.1f}{fifo['makespan_s'] / fifo['lower_bound_s']:15.2f}")
    print(f"{'one after another':24}{ours['serial_s']:12.1f}{ours['serial_s'] / lb:15.2f}")
    print(f"{'lower bound':24}{lb:12.1f}{1:15.2f}   (GPU-time/GPUs {ours['gpu_time_bound_s']:.1f} s, "
          f"critical path {ours['critical_path_s']:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
