"""The scheduling policy on the simulator (launcher/sim): makespan / bound and cost per decision.

    PYTHONPATH=. .venv/bin/python bench/simulate.py [--seeds 20] [--json OUT]
    (also the `simulate` piece of `python -m bench`)

The same controller core and policy code the driver runs, on a virtual clock: 200-job DAGs of
widths 1/2/4/8 on 4 nodes x 8 GPUs (20 seeds, each policy on the same DAGs), and a 10,000-job DAG
(2-node jobs among them, random crashes, OOMs, lost nodes and hangs) on 64 x 8 GPUs. The bound is
max(GPU-seconds / GPUs, critical path) over the work the jobs really did; greedy is the policy the
driver ran before reservations (critical path in planned steps there, in seconds here), FIFO the
baseline. Cost per decision is the wall time in the core's scheduling and books / jobs placed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.sim.dag import DagSpec, random_dag
from launcher.sim.engine import Faults, SimConfig, simulate

if TYPE_CHECKING:
    from bench.results import PieceResult

POLICIES = ("backfill", "greedy", "fifo")
SMALL = {"stages (needs from the last 40 jobs)": DagSpec(jobs=200),
         "wide (needs from any earlier job)": DagSpec(jobs=200, max_needs=2, window=200)}
BIG = DagSpec(jobs=10_000, multi_node=0.03, pipelines=100)
BIG_FAULTS = Faults(fail=0.05, hang=0.02)


def small(seeds: int, sigma: float = 0.0) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for label, spec in SMALL.items():
        runs = {p: [simulate(random_dag(spec, s), SimConfig(policy=p, seed=s, estimate_sigma=sigma)) for s in range(seeds)]
                for p in POLICIES}
        out[label] = {p: {"median": statistics.median(r.ratio for r in rs), "max": max(r.ratio for r in rs),
                          "ms_per_decision": statistics.median(r.ms_per_decision for r in rs)} for p, rs in runs.items()}
        ours, fifo = runs["backfill"], runs["fifo"]
        out[label]["ours_vs_fifo_median"] = statistics.median(a.makespan_s / b.makespan_s for a, b in zip(ours, fifo))
    return out


def big(policy: str = "backfill") -> dict[str, Any]:
    r = simulate(random_dag(BIG, 0), SimConfig(nodes=64, policy=policy, faults=BIG_FAULTS))
    return {"ratio": r.ratio, "ms_per_decision": r.ms_per_decision, "wall_s": r.wall_s, "jobs": r.jobs,
            "attempts": r.attempts, "succeeded": r.succeeded, "failed": r.failed, "skipped": r.skipped,
            "gpu_time_bound_s": r.bounds.gpu_time_s, "critical_path_s": r.bounds.critical_path_s}


def bench(quick: bool) -> PieceResult:
    from bench.results import PieceResult, Row

    seeds = 20
    exact, noisy = small(seeds), small(seeds, sigma=0.3)
    rows = []
    for label, res in exact.items():
        b, g, f = res["backfill"], res["greedy"], res["fifo"]
        rows.append(Row(f"sim 200 jobs, {label}: backfill (ours)", f"{b['median']:.3f} x bound", b["median"],
                        baseline=f"greedy {g['median']:.3f}, FIFO {f['median']:.3f}", target="median <= 1.05 x bound",
                        ratio=b["median"], met=b["median"] <= 1.05,
                        note=f"{seeds} seeds, 4 x 8 GPUs, exact estimates, zero launcher overhead; worst seed "
                             f"{b['max']:.3f}; ours / FIFO makespan median {res['ours_vs_fifo_median']:.3f}; "
                             f"{b['ms_per_decision']:.3f} ms per decision"))
        n = noisy[label]["backfill"]
        rows.append(Row(f"sim 200 jobs, {label}: backfill, estimates off by lognormal sigma 0.3",
                        f"{n['median']:.3f} x bound", n["median"], baseline=f"greedy {noisy[label]['greedy']['median']:.3f}",
                        ratio=n["median"], note="what wrong durations cost; no target"))
    r = big()   # seconds of CPU: the same in --quick
    rows.append(Row("sim 10,000 jobs on 64 x 8 GPUs, with faults: makespan", f"{r['ratio']:.3f} x bound", r["ratio"],
                    target="<= 1.05 x bound", ratio=r["ratio"], met=r["ratio"] <= 1.05,
                    note=f"{r['attempts']} attempts ({BIG_FAULTS.fail:.0%} crash/OOM/lost, {BIG_FAULTS.hang:.0%} hang), "
                         f"{r['succeeded']} succeeded, {r['failed']} failed, {r['skipped']} skipped; replayed in "
                         f"{r['wall_s']:.1f} s; bound: GPU-time {r['gpu_time_bound_s']:.0f} s, critical path "
                         f"{r['critical_path_s']:.0f} s"))
    rows.append(Row("sim 10,000 jobs: cost per scheduling decision", f"{r['ms_per_decision']:.3f} ms",
                    r["ms_per_decision"], target="<= 1 ms", met=r["ms_per_decision"] <= 1.0,
                    note="wall time in the core's scheduling passes and books / jobs placed"))
    return PieceResult("simulate", rows, {"exact": exact, "sigma_0.3": noisy, "big": r})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res = {"exact": small(args.seeds), "sigma_0.3": small(args.seeds, 0.3), "big": big()}
    for mode in ("exact", "sigma_0.3"):
        for label, r in res[mode].items():
            print(f"{mode:10} {label:40} " + "  ".join(f"{p} {r[p]['median']:.3f}" for p in POLICIES))
    b = res["big"]
    print(f"10,000 jobs on 512 GPUs: {b['ratio']:.3f} x bound, {b['ms_per_decision']:.3f} ms per decision, "
          f"{b['wall_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
