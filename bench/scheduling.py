"""Makespan of random DAGs of synthetic jobs on a simulated 4-node x 4-GPU Ray cluster, per policy.

    PYTHONPATH=. .venv/bin/python bench/scheduling.py [--jobs 32] [--seeds 5] [--json OUT]
    (also the `scheduling` piece of `python -m bench`)

Each seed's plan runs through the real launcher once per policy (backfill, ours; FIFO plan order),
each on a fresh ray.cluster_utils.Cluster, the order of the two alternating with the seed. From the
journals: makespan = first rank spawned -> last rank exited, over the bound from the jobs' own work
(each job's first rank spawned -> its last rank exited, from the journal's process records):
max(GPU-seconds / GPUs, critical path), and the same with whole-node jobs packed by nodes. It
reports medians over the seeds; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from launcher.journal import Journal
from launcher.scheduling.bounds import bounds

if TYPE_CHECKING:
    from bench.results import PieceResult

REPO = Path(__file__).resolve().parents[1]
NODES, GPUS = 4, 4
POLICIES = ("backfill", "fifo")


STEP_S = 0.2


def random_plan(n: int, seed: int, min_s: float = 2.0, max_s: float = 8.0) -> dict[str, Any]:
    """Layered random DAG: each job needs 0-2 earlier jobs, takes 1-4 GPUs and min_s-max_s seconds."""
    rng = random.Random(seed)
    jobs: dict[str, Any] = {}
    names: list[str] = []
    for i in range(n):
        name = f"j{i:03d}"
        needs = rng.sample(names[-12:], k=min(len(names[-12:]), rng.choice([0, 0, 1, 1, 2]))) if names else []
        steps = rng.randint(round(min_s / STEP_S), round(max_s / STEP_S))
        jobs[name] = {"params": {"steps": steps, "step_time": STEP_S}, "needs": needs,
                      "resources": {"gpus_per_node": rng.choice([1, 1, 2, 2, 3, 4])}}
        names.append(name)
    return {"name": "sched-bench", "defaults": {"method": "synthetic", "checkpoint": {"every": 1000}}, "jobs": jobs}


def run_plan(plan: Path, runs: Path, address: str, order: str, run_id: str, timeout: float = 3600) -> Path:
    out = subprocess.run([sys.executable, "-m", "launcher", "launch", str(plan), "--address", address,
                          "--runs-dir", str(runs), "--no-dashboard", "--order", order, "--run-id", run_id],
                         cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{order} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return runs / run_id


def measure(run_dir: Path) -> dict[str, Any]:
    """The run's makespan and bounds from its ranks' own lifetimes (spawn -> exit)."""
    from bench.launch_overhead import boot_epoch
    boot = boot_epoch()
    j = Journal(run_dir / "run.db", readonly=True)
    try:
        jobs = {r["name"]: r for r in j.jobs()}
        spans: dict[str, tuple[float, float]] = {}
        for name in jobs:
            ranks = [p for p in j.processes(job=name) if p.role == "rank"]
            rows = j.db.execute("SELECT pid, ended FROM processes WHERE job=? AND role='rank'", (name,)).fetchall()
            ended = [e for _, e in rows if e is not None]
            if ranks and ended:
                spans[name] = (min(boot + p.create_time for p in ranks), max(ended))
        att = {a["job"]: a for a in j.attempts()}
    finally:
        j.close()
    dur = {n: e - s for n, (s, e) in spans.items()}
    needs = {n: tuple(u for u in json.loads(jobs[n]["needs"]) if u in dur) for n in dur}
    b = bounds(needs, dur, {n: 1 for n in dur}, {n: jobs[n]["world_size"] for n in dur}, NODES, GPUS)
    makespan = max(e for _, e in spans.values()) - min(s for s, _ in spans.values())
    return {"makespan_s": makespan, "work_bound_s": b.work, "node_bound_s": b.node, "gpu_time_bound_s": b.gpu_time_s,
            "critical_path_s": b.critical_path_s, "serial_s": sum(dur.values()), "jobs": len(dur),
            "mean_job_s": sum(dur.values()) / max(1, len(dur)), "attempts": len(att)}


def one_run(plan: Path, runs: Path, order: str, run_id: str) -> dict[str, Any]:
    """One policy on a fresh simulated cluster: nothing left over from the other policy's run."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 32, "num_gpus": GPUS, "include_dashboard": False})
    try:
        for _ in range(NODES - 1):
            cluster.add_node(num_cpus=32, num_gpus=GPUS)
        cluster.wait_for_nodes()
        t0 = time.time()
        out = measure(run_plan(plan, runs, cluster.address, order, run_id))
        out["wall_s"] = time.time() - t0
        return out
    finally:
        cluster.shutdown()


def compare(jobs: int, seeds: int, min_s: float, max_s: float) -> dict[str, Any]:
    results: dict[str, Any] = {"cluster": f"{NODES} nodes x {GPUS} GPUs (simulated)", "jobs": jobs, "seeds": seeds,
                               "nominal_s": [min_s, max_s], "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            plan = Path(tmp) / f"plan-{seed}.yaml"
            plan.write_text(yaml.safe_dump(random_plan(jobs, seed, min_s, max_s)))
            order = POLICIES if seed % 2 == 0 else POLICIES[::-1]   # alternate: neither always runs on a warm machine
            for policy in order:
                r = one_run(plan, Path(tmp) / "runs", policy, f"bench-{policy}-{seed}")
                results["runs"].append({"seed": seed, "policy": policy, **r})
    return results


def summary(r: dict[str, Any]) -> dict[str, Any]:
    by = {p: [x for x in r["runs"] if x["policy"] == p] for p in POLICIES}
    med = statistics.median
    out: dict[str, Any] = {}
    for p, runs in by.items():
        out[p] = {"work_ratio": med(x["makespan_s"] / x["work_bound_s"] for x in runs),
                  "node_ratio": med(x["makespan_s"] / x["node_bound_s"] for x in runs),
                  "makespan_s": med(x["makespan_s"] for x in runs),
                  "per_seed": [round(x["makespan_s"] / x["work_bound_s"], 3) for x in runs]}
    pairs = [(a, b) for a in by["backfill"] for b in by["fifo"] if a["seed"] == b["seed"]]
    out["ours_vs_fifo"] = med(a["makespan_s"] / b["makespan_s"] for a, b in pairs)
    out["serial_ratio"] = med(a["serial_s"] / a["work_bound_s"] for a in by["backfill"])
    out["mean_job_s"] = med(a["mean_job_s"] for a in by["backfill"])
    return out


# --quick / full: jobs, seeds, nominal seconds. 32 jobs: GPU-time and critical path about equal (~70 s),
# so the order matters.
SIZES = {True: (32, 5, 5.0, 20.0), False: (32, 10, 5.0, 20.0)}


def bench(quick: bool) -> PieceResult:
    from bench.results import PieceResult, Row

    jobs, seeds, lo, hi = SIZES[quick]
    r = compare(jobs, seeds, lo, hi)
    s = summary(r)
    ours, fifo = s["backfill"], s["fifo"]
    note = (f"{jobs} synthetic jobs (random DAG, 0-2 needs each, 1-4 GPUs, nominal {lo:g}-{hi:g} s; measured mean "
            f"{s['mean_job_s']:.1f} s rank spawn -> exit) on {r['cluster']}, {seeds} seeds, a fresh cluster per run, "
            f"policy order alternating; bound = max(GPU-seconds / 16, critical path) over the ranks' own lifetimes; "
            f"per seed {ours['per_seed']}; 1.31-1.36 x (1.45-1.47 x against the work alone) before the controller v2")
    rows = [
        Row("makespan / work bound, backfill (ours), median", f"{ours['work_ratio']:.3f} x", ours["work_ratio"],
            baseline=f"FIFO {fifo['work_ratio']:.3f} x", target="<= 1.15 x", ratio=ours["work_ratio"],
            met=ours["work_ratio"] <= 1.15, note=note),
        Row("makespan / work bound, FIFO plan order, median", f"{fifo['work_ratio']:.3f} x", fifo["work_ratio"],
            ratio=fifo["work_ratio"], note=f"per seed {fifo['per_seed']}"),
        Row("makespan / bound with whole-node jobs packed, backfill, median", f"{ours['node_ratio']:.3f} x",
            ours["node_ratio"], ratio=ours["node_ratio"]),
        Row("ours / FIFO makespan, median over seeds", f"{s['ours_vs_fifo']:.3f}", s["ours_vs_fifo"], baseline="FIFO",
            target="< 1 (ahead of FIFO)", ratio=s["ours_vs_fifo"], met=s["ours_vs_fifo"] < 1.0),
        Row("sum of the jobs' own durations (no run: what one after another would take at least)",
            f"{s['serial_ratio']:.2f} x bound", s["serial_ratio"], ratio=s["serial_ratio"]),
    ]
    return PieceResult("scheduling", rows, {**r, "summary": s})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--min-s", type=float, default=5.0, help="shortest nominal job duration")
    ap.add_argument("--max-s", type=float, default=20.0, help="longest nominal job duration")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    r = compare(args.jobs, args.seeds, args.min_s, args.max_s)
    s = summary(r)
    print(f"scheduling: {args.jobs} synthetic jobs x {args.seeds} seeds, {r['cluster']}")
    for p in POLICIES:
        print(f"{p:10} makespan / work bound median {s[p]['work_ratio']:.3f}  per seed {s[p]['per_seed']}")
    print(f"ours / FIFO median {s['ours_vs_fifo']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({**r, "summary": s}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
