"""Command-line entry points behind bin/: `bin/launch PLAN`, `bin/status [RUN]`.

Each is a `main() -> int`; bin/ scripts only set up the environment and call them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

import psutil
from rich.console import Console

from launcher import rundir, status
from launcher.cluster import ClusterOptions, planned_local_shape, shape_from_ray, start
from launcher.dsconfig import zero_stage
from launcher.journal import Journal
from launcher.plan import Plan, PlanError, load_plan

DEFAULT_RUNS = Path(os.environ.get("SL_RUNS_DIR", "runs"))


def _launch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bin/launch", description="Run an experiment plan on Ray.")
    p.add_argument("plan", help="plan YAML file")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a plan value, e.g. --set jobs.lisa.params.rho=1 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded jobs and start nothing")
    p.add_argument("--address", help="join an existing Ray cluster (auto or HOST:PORT) instead of starting one")
    p.add_argument("--simulate-gpus", type=int, metavar="N", help="declare N logical GPUs (default 2 where no GPU is found)")
    p.add_argument("--gpu-type", help="GPU type declared for the local node when simulating (e.g. H20)")
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS, help="where run directories go (default: ./runs)")
    p.add_argument("--run-id", help="name of the run directory (default: <plan>-<time>-<random>)")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="dashboard bind address (default: localhost only)")
    p.add_argument("--dashboard-port", type=int, default=8265)
    return p


def print_dry_run(plan: Plan, console: Console) -> None:
    console.print(f"plan {plan.name} ({plan.file}): {len(plan.jobs)} job(s), in dependency order\n")
    for i, (name, job) in enumerate(plan.jobs.items(), 1):
        c, r = job.config, job.config.resources
        console.print(f"[bold]{i}. {name}[/]  method={c.method}  needs={list(job.needs) or '-'}")
        console.print(f"   resources: {r.nodes} node(s) x {r.gpus_per_node} GPU(s)"
                      f"{' ' + r.gpu_type if r.gpu_type else ''} = world size {r.world_size}")
        if c.model:
            console.print(f"   model: {c.model.short_name()} ({c.model.path or c.model.gguf or 'tiny ' + str(c.model.tiny)})"
                          + (f" + adapter {c.model.adapter} ({c.model.adapter_mode})" if c.model.adapter else ""))
        for role, d in job.data.items():
            console.print(f"   data.{role}: {d.source}" + (f" [{d.split}]" if d.split != "train" else ""))
        if job.method_params:
            console.print("   params: " + ", ".join(f"{k}={v}" for k, v in job.method_params.items()))
        if job.ds_config is not None:
            console.print(f"   deepspeed: ZeRO-{zero_stage(job.ds_config)} from {job.ds_name}")
            console.print("   " + json.dumps(job.ds_config, sort_keys=True))
        console.print(f"   output: {DEFAULT_RUNS}/<run-id>/jobs/{name}/\n")


def _setup_logging(log_file: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("launcher")
    root.setLevel(logging.INFO)
    for h in (logging.StreamHandler(sys.stdout), logging.FileHandler(log_file)):
        h.setFormatter(fmt)
        root.addHandler(h)


def launch_main(argv: list[str] | None = None) -> int:
    args = _launch_parser().parse_args(argv)
    console = Console(soft_wrap=True)
    opts = ClusterOptions(address=args.address, simulate_gpus=args.simulate_gpus, gpu_type=args.gpu_type,
                          dashboard=not args.no_dashboard, dashboard_host=args.dashboard_host,
                          dashboard_port=args.dashboard_port)
    ctx = None
    if args.address:  # joining starts nothing; the cluster's real shape validates the plan
        ctx = start(opts, None)
        shape, declare = shape_from_ray(), None
    else:
        shape, declare = planned_local_shape(opts)
    try:
        plan = load_plan(args.plan, args.sets, cluster=None if args.dry_run and not args.address else shape)
        env = {name: rundir.job_env(job) for name, job in plan.jobs.items()}
    except PlanError as e:
        print(f"{len(e.problems)} problem(s) in the plan; nothing was started:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"{args.plan}: {e.args[0]}; nothing was started", file=sys.stderr)
        return 2
    if args.dry_run:
        print_dry_run(plan, console)
        return 0

    args.runs_dir.mkdir(parents=True, exist_ok=True)
    rd = rundir.create(plan, args.runs_dir, args.run_id)
    _setup_logging(rd.driver_log)
    journal = Journal(rd.db)
    me = psutil.Process()
    journal.create_run(rd.root.name, str(plan.file), {"argv": sys.argv[1:] if argv is None else argv},
                       me.pid, me.create_time(), socket.gethostname())
    for i, (name, job) in enumerate(plan.jobs.items()):
        journal.add_job(name, job.base, job.config.method, list(job.needs), job.config.resources.world_size, i)
    print(f"run {rd.root.name}\n  dir {rd.root}\n  cluster {shape.describe()}", flush=True)
    t0 = time.time()
    try:
        if ctx is None:
            ctx = start(opts, declare)
        journal.set_run(ray_address=ctx.address_info.get("address"), owns_ray=int(not args.address))
        if getattr(ctx, "dashboard_url", None):
            print(f"  dashboard http://{ctx.dashboard_url}", flush=True)
        from launcher.driver import Driver  # imports ray actors; only needed once Ray is up
        final = Driver(plan, rd, journal, env, shape_from_ray()).run()
    finally:
        import ray
        if ray.is_initialized():
            ray.shutdown()
    status.render(status.collect(rd), console)
    console.print(f"{final} in {time.time() - t0:.0f}s")
    journal.close()
    return 0 if final == "succeeded" else 1


def status_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bin/status", description="Show a run's jobs from its journal.")
    p.add_argument("run", nargs="?", help="run id or directory (default: the latest run)")
    p.add_argument("--json", action="store_true", help="machine-readable output (a stable contract)")
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS)
    args = p.parse_args(argv)
    try:
        rd = rundir.find_run(args.runs_dir, args.run)
    except FileNotFoundError as e:
        print(str(e), file=sys.stderr)
        return 2
    st = status.collect(rd)
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        status.render(st)
    return 0
