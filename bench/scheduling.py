"""Makespan of a random DAG of synthetic jobs on a simulated 4-node x 4-GPU Ray cluster.

    PYTHONPATH=. .venv/bin/python bench/scheduling.py [--jobs 48] [--seed 0] [--min-s 5] [--max-s 20] [--json OUT]
    (also the `scheduling` piece of `python -m bench`)

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
from typing import TYPE_CHECKING, Any

import yaml

from launcher.graph import JobGraph
from launcher.journal import Journal

if TYPE_CHECKING:
    from bench.results import PieceResult

REPO = Path(__file__).resolve().parents[1]
NODES, GPUS = 4, 4


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


def run_plan(plan: Path, runs: Path, address: str, order: str, timeout: float = 3600) -> Path:
    out = subprocess.run([sys.executable, "-m", "launcher", "launch", str(plan), "--address", address,
                          "--runs-dir", str(runs), "--no-dashboard", "--order", order, "--run-id", f"bench-{order}"],
                         cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{order} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
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
    paths = JobGraph(needs).critical_path(dur)
    cp = max(paths.values())
    # Launch overhead under load (up to 16 GPUs busy), from the same journal: see bench/launch_overhead.py.
    from bench.launch_overhead import from_journal, summarize
    return {"makespan_s": makespan, "lower_bound_s": max(area, cp), "gpu_time_bound_s": area,
            "critical_path_s": cp, "serial_s": sum(dur.values()), "jobs": len(dur),
            "mean_job_s": sum(dur.values()) / max(1, len(dur)), "launch": summarize(from_journal(run_dir)),
            "critical_chain": critical_chain(paths, dur, needs, att)}


def critical_chain(paths: dict[str, float], dur: dict[str, float], needs: dict[str, tuple[str, ...]],
                   att: dict[str, Any]) -> dict[str, Any]:
    """The measured critical path as a chain, and the time its jobs waited between one another:
    what the lower bound does not count (hand-off, placement, launch) when the path dominates."""
    children: dict[str, list[str]] = {n: [] for n in needs}
    for n, ups in needs.items():
        for u in ups:
            children[u].append(n)
    job = max(paths, key=paths.__getitem__)
    chain = [job]
    while children[job]:
        job = max(children[job], key=paths.__getitem__)
        chain.append(job)
    start = min(a["started"] for a in att.values())
    waits = [att[chain[0]]["started"] - start] + [att[b]["started"] - att[a]["ended"] for a, b in zip(chain, chain[1:])]
    return {"jobs": chain, "waits_s": waits, "wait_total_s": sum(waits)}


def compare(jobs: int, seed: int, min_s: float, max_s: float) -> dict[str, Any]:
    """The same random plan run in critical-path order (ours) and in FIFO plan order, on one cluster."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 32, "num_gpus": GPUS, "include_dashboard": False})
    results: dict[str, Any] = {"cluster": f"{NODES} nodes x {GPUS} GPUs (simulated)", "jobs": jobs, "seed": seed,
                               "nominal_s": [min_s, max_s]}
    try:
        for _ in range(NODES - 1):
            cluster.add_node(num_cpus=32, num_gpus=GPUS)
        cluster.wait_for_nodes()
        with tempfile.TemporaryDirectory() as tmp:
            plan = Path(tmp) / "plan.yaml"
            plan.write_text(yaml.safe_dump(random_plan(jobs, seed, min_s, max_s)))
            for order in ("critical-path", "fifo"):
                t0 = time.time()
                results[order] = measure(run_plan(plan, Path(tmp) / "runs", cluster.address, order))
                results[order]["wall_s"] = time.time() - t0
    finally:
        cluster.shutdown()
    return results


# --quick / full: jobs, nominal seconds. 32 jobs: GPU-time and critical path about equal (~70 s), so the
# order matters; 200: GPU-time bound, each run about 8 min here.
SIZES = {True: (32, 5.0, 20.0), False: (200, 5.0, 20.0)}


def bench(quick: bool) -> PieceResult:
    from bench.results import PieceResult, Row, fmt_s

    jobs, lo, hi = SIZES[quick]
    r = compare(jobs, 0, lo, hi)
    ours, fifo = r["critical-path"], r["fifo"]
    lb = ours["lower_bound_s"]
    note = (f"{jobs} synthetic jobs (random DAG, 0-2 needs each, 1-4 GPUs, nominal {lo:g}-{hi:g} s; measured mean "
            f"{ours['mean_job_s']:.1f} s incl. rank start-up) on {r['cluster']}; lower bound = max(GPU-time / 16 = "
            f"{ours['gpu_time_bound_s']:.0f} s, critical path = {ours['critical_path_s']:.0f} s) over the measured "
            "durations of the same run")
    la = ours["launch"]
    ch = ours["critical_chain"]
    note += (f"; ours' measured critical chain ({len(ch['jobs'])} jobs) waited {ch['wait_total_s']:.1f} s in all "
             "between its jobs (hand-off, launch, or GPUs busy), which the bound does not count")
    rows = [
        Row("makespan, critical-path order (ours)", fmt_s(ours["makespan_s"], 1), ours["makespan_s"],
            baseline=f"FIFO {fifo['makespan_s']:.1f} s", target=f"lower bound {lb:.1f} s; <= 1.10 x",
            ratio=ours["makespan_s"] / lb, met=ours["makespan_s"] / lb <= 1.10, note=note),
        Row("makespan, FIFO plan order", fmt_s(fifo["makespan_s"], 1), fifo["makespan_s"],
            target=f"lower bound {fifo['lower_bound_s']:.1f} s", ratio=fifo["makespan_s"] / fifo["lower_bound_s"]),
        Row("one after another (the seed's one-click script)", fmt_s(ours["serial_s"], 1), ours["serial_s"],
            target=f"lower bound {lb:.1f} s", ratio=ours["serial_s"] / lb),
        Row("ours / FIFO makespan", f"{ours['makespan_s'] / fifo['makespan_s']:.3f}", ours["makespan_s"] / fifo["makespan_s"],
            baseline="FIFO", ratio=ours["makespan_s"] / fifo["makespan_s"]),
        Row("launch overhead under load (ours' run), median", fmt_s(la["overhead_median_s"]), la["overhead_median_s"],
            target="<= 1 s", met=None if la["overhead_median_s"] is None else la["overhead_median_s"] <= 1.0,
            note=f"max {fmt_s(la['overhead_max_s'])}; same measure as the launch piece, with up to 16 ranks and "
                 "their agents on this machine's cores"),
    ]
    return PieceResult("scheduling", rows, r)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-s", type=float, default=5.0, help="shortest nominal job duration")
    ap.add_argument("--max-s", type=float, default=20.0, help="longest nominal job duration")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = compare(args.jobs, args.seed, args.min_s, args.max_s)
    ours, fifo = results["critical-path"], results["fifo"]
    lb = ours["lower_bound_s"]
    print(f"scheduling: {args.jobs} synthetic jobs (1-4 GPUs, {args.min_s:g}-{args.max_s:g} s), {results['cluster']}")
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
