"""Every benchmark side by side in one run: a table, plus the raw numbers as JSON.

    PYTHONPATH=. .venv/bin/python -m bench [--quick] [--json OUT] [--only NAME ...]      (or: bin/bench ...)

Pieces (one module each): scheduling (bench/scheduling.py), simulate (bench/simulate.py), launch (bench/launch_overhead.py),
recovery (bench/recovery.py), faults (bench/fault_matrix.py), monitor (bench/monitor_cost.py), training (bench/training_overhead.py),
methods (bench/method_cost.py: Lisa / SFT, FABE / SFT), scale (bench/scale.py), packing (bench/packing.py). It reports: a
missed target is printed as such, a piece that cannot run says why; the exit status is 0 either way.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from bench.results import REPO, Machine, PieceResult, machine_lines, table_lines, to_json

PIECES = {
    "scheduling": "bench.scheduling",
    "simulate": "bench.simulate",
    "launch": "bench.launch_overhead",
    "recovery": "bench.recovery",
    "faults": "bench.fault_matrix",
    "monitor": "bench.monitor_cost",
    "training": "bench.training_overhead",
    "methods": "bench.method_cost",
    "scale": "bench.scale",
    "packing": "bench.packing",
}


def run_piece(name: str, quick: bool) -> PieceResult:
    t0 = time.perf_counter()
    try:
        res = importlib.import_module(PIECES[name]).bench(quick)
    except Exception as e:  # one piece that cannot run must not cost the others their numbers
        res = PieceResult(name, unavailable=f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}",
                          details={"traceback": traceback.format_exc()})
    res.wall_s = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes: under ten minutes on a 2-core machine")
    ap.add_argument("--json", type=Path, help="where the JSON goes (default: runs/bench/bench-<time>.json)")
    ap.add_argument("--only", nargs="+", choices=list(PIECES), metavar="NAME",
                    help=f"run only these pieces: {', '.join(PIECES)}")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    names = args.only or list(PIECES)
    mode = "quick" if args.quick else "full"
    machine = Machine.here()
    t0 = time.perf_counter()
    results = []
    for name in names:
        print(f"[bench] {name} ({mode}) started {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)
        res = run_piece(name, args.quick)
        results.append(res)
        state = f"unavailable: {res.unavailable}" if res.unavailable else "done"
        print(f"[bench] {name} {state} in {res.wall_s:.0f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    machine.load_after = os.getloadavg()
    out = args.json or REPO / "runs" / "bench" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_json(results, machine, mode, wall), indent=1, default=str))
    print(f"python -m bench{' --quick' if args.quick else ''}"
          f"{' --only ' + ' '.join(args.only) if args.only else ''}: {wall:.0f} s, {time.strftime('%Y-%m-%d %H:%M')}")
    print("\n".join(machine_lines(machine)))
    print()
    print("\n".join(table_lines(results)))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
