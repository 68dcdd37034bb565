"""Command-line entry points behind bin/: launch, status, kill, resume, logs.

Each is a `main() -> int`; bin/ scripts only set up the environment and call them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable

import subprocess

import psutil
from rich.console import Console

from launcher import cliargs, driver_lock, exitcodes, kill, pathcheck, procs, rundir, status
from launcher.cluster import ClusterOptions, planned_local_shape, shape_from_ray, start
from launcher.cliresult import Detached, KillResult
from launcher.control.requests import request_kill
from launcher.dsconfig import zero_stage
from launcher.journal import Journal
from launcher.layout import RunDir
from launcher.lifecycle import DriverInfo, sweep
from launcher.plan import Plan, PlanError, load_plan
from launcher.resources import ClusterShape
from launcher.runarg import add_run_arguments, default_runs_dir, open_run
from launcher.scheduling import estimates

DEFAULT_RUNS = default_runs_dir()


def _launch_parser() -> argparse.ArgumentParser:
    return cliargs.launch_parser()   # stdlib-only parsers: `sl launch --help` answers without this module


def print_dry_run(plan: Plan, console: Console, runs_dir: Path = DEFAULT_RUNS) -> None:
    console.print(f"plan {plan.name} ({plan.file}): {len(plan.jobs)} job(s), in dependency order\n")
    for i, (name, job) in enumerate(plan.jobs.items(), 1):
        c, r = job.config, job.config.resources
        console.print(f"{i}. {name}  method={c.method}  needs={list(job.needs) or '-'}", style="bold")
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
        console.print(f"   output: {runs_dir}/<run-id>/jobs/{name}/\n")


def _setup_logging(log_file: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("launcher")
    root.setLevel(logging.INFO)
    for h in (logging.StreamHandler(sys.stdout), logging.FileHandler(log_file)):
        h.setFormatter(fmt)
        root.addHandler(h)


def _cluster_options(args: argparse.Namespace) -> ClusterOptions:
    return ClusterOptions(address=args.address, simulate_gpus=args.simulate_gpus, gpu_type=args.gpu_type,
                          simulate_gpu_memory=getattr(args, "simulate_gpu_memory", None),
                          dashboard=not args.no_dashboard, dashboard_host=args.dashboard_host,
                          dashboard_port=args.dashboard_port)


def _detach(argv: list[str], runs_dir: Path, run_id: str, as_json: bool = False) -> int:
    """Re-run this launch as a driver in its own session (an SSH drop or closed terminal kills
    nothing), its output in the run directory; return as soon as the run is on record."""
    root = runs_dir / run_id
    root.mkdir(parents=True)
    child = [a for a in argv if a not in ("--detach", "--json")] + ["--run-id", run_id]
    with open(root / "driver.out", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "launcher", *child], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd())
    deadline = time.time() + 120
    while not (root / "run.db").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    if proc.poll() not in (None, 0):
        print(f"the detached driver exited with {proc.returncode}; see {root / 'driver.out'}", file=sys.stderr)
        return 1
    if as_json:
        print(Detached("launch", run_id, str(root.resolve()), proc.pid, str(root / "driver.out"), str(runs_dir)).to_json())
        return 0
    print(f"run {run_id}\n  dir {root.resolve()}\n  driver pid {proc.pid} (detached; log {root / 'driver.out'})")
    print(f"  watch: sl status {run_id} --runs-dir {runs_dir}    stop: sl kill {run_id} --runs-dir {runs_dir}")
    return 0


def run_driver(plan: Plan, rd: RunDir, journal: Journal, env: dict[str, dict[str, str]], opts: ClusterOptions,
               declare: int | None, ctx: object | None, console: Console, order: str = "backfill") -> int:
    """Start or join Ray, run the driver loop to the end, print the final table."""
    t0 = time.time()
    try:
        if ctx is None:
            ctx = start(opts, declare)
        journal.set_run(ray_address=ctx.address_info.get("address"), owns_ray=int(not opts.address))  # type: ignore[attr-defined]
        if getattr(ctx, "dashboard_url", None):
            print(f"  dashboard http://{ctx.dashboard_url}", flush=True)  # type: ignore[attr-defined]
        from launcher import driver  # imports ray actors; only needed once Ray is up
        final = driver.run(plan, rd, journal, env, shape_from_ray(), order)
    except BaseException as e:
        journal.set_run(state="failed", ended=time.time())
        journal.event("run", f"driver error: {type(e).__name__}: {e}")
        raise
    finally:
        import ray
        if ray.is_initialized():
            ray.shutdown()
    status.render(status.collect(rd), console)
    from launcher import report   # matplotlib stays out: tables only here
    if report.print_results(rd, console):
        console.print(f"report.md and plots: bin/report {rd.root.name} --runs-dir {rd.root.parent}")
    console.print(f"{final} in {time.time() - t0:.0f}s")
    journal.close()
    return 0 if final == "succeeded" else 1


def wait_for_nodes(check: Callable[[ClusterShape], object], patience_s: float, poll_s: float = 2.0,
                   read_shape: Callable[[], ClusterShape] = shape_from_ray) -> ClusterShape:
    """The cluster's shape once `check` (loading the plan against it) passes, or the last one when
    `patience_s` ran out (the caller's own load then reports what does not fit). Workers that are
    still starting (a Slurm step, a slow host) are waited for, with the reason printed once."""
    deadline = time.monotonic() + patience_s
    said = None
    while True:
        shape = read_shape()
        try:
            check(shape)
            return shape
        except PlanError as e:
            if time.monotonic() >= deadline:
                return shape
            why = e.problems[0] if e.problems else str(e)
            if why != said:
                print(f"waiting up to {deadline - time.monotonic():.0f}s for nodes ({shape.describe()}): {why}",
                      flush=True)
                said = why
        time.sleep(poll_s)


def _plan_problems(e: PlanError) -> int:
    print(f"{len(e.problems)} problem(s) in the plan; nothing was started:", file=sys.stderr)
    for p in e.problems:
        print(f"  {p}", file=sys.stderr)
    return 2


def launch_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _launch_parser().parse_args(argv)
    bad_run_id = pathcheck.file_name_problem(args.run_id) if args.run_id is not None else None
    if bad_run_id:  # the run's directory name: checked before Ray is joined or anything is made
        print(f"--run-id {pathcheck.clip(args.run_id)}: {bad_run_id}; nothing was started", file=sys.stderr)
        return 2
    if args.json and not args.detach:   # an attached run prints its live table; JSON is for what returns at once
        print("--json goes with --detach (sl status RUN --json reads any run); nothing was started", file=sys.stderr)
        return 2
    # No markup: plan values such as "[validation]" must print as written.
    console = Console(soft_wrap=True, markup=False, highlight=False, width=None if sys.stdout.isatty() else 200)
    opts = _cluster_options(args)
    ctx = None
    if args.address and not args.detach and not args.dry_run:
        # Joining starts nothing; the cluster's real shape validates the plan, once its nodes are there.
        try:
            load_plan(args.plan, args.sets, cluster=None)   # the plan's own mistakes: at once, not after a wait
        except PlanError as e:
            return _plan_problems(e)
        except KeyError as e:
            print(f"{args.plan}: {e.args[0]}; nothing was started", file=sys.stderr)
            return 2
        ctx = start(opts, None)
        shape, declare = wait_for_nodes(lambda s: load_plan(args.plan, args.sets, cluster=s), args.wait_for_nodes), None
    else:
        shape, declare = planned_local_shape(opts)
    try:
        plan = load_plan(args.plan, args.sets, cluster=None if (args.dry_run or args.address) and ctx is None else shape)
        env = {name: rundir.job_env(job) for name, job in plan.jobs.items()}
    except PlanError as e:
        return _plan_problems(e)
    except KeyError as e:
        print(f"{args.plan}: {e.args[0]}; nothing was started", file=sys.stderr)
        return 2
    if args.dry_run:
        print_dry_run(plan, console, args.runs_dir)
        return 0
    if args.detach:
        return _detach(["launch", *argv], args.runs_dir, args.run_id or rundir.new_run_id(plan), args.json)

    args.runs_dir.mkdir(parents=True, exist_ok=True)
    rd = rundir.create(plan, args.runs_dir, args.run_id)
    driver_lock.acquire(rd.driver_lock)   # a fresh run directory: nobody else can hold it
    _setup_logging(rd.driver_log)
    journal = Journal(rd.db)
    me = psutil.Process()
    journal.create_run(rd.root.name, str(plan.file), {"argv": argv}, me.pid, procs.start_time(me), socket.gethostname())
    for i, (name, job) in enumerate(plan.jobs.items()):
        journal.add_job(name, job.base, job.config.method, list(job.needs), job.config.resources.world_size, i,
                        signature=estimates.signature(job))
    print(f"run {rd.root.name}\n  dir {rd.root}\n  cluster {shape.describe()}", flush=True)
    return run_driver(plan, rd, journal, env, opts, declare, ctx, console, args.order)


def resume_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = cliargs.resume_parser().parse_args(argv)
    if args.json and not args.detach:
        print("--json goes with --detach (sl status RUN --json reads any run)", file=sys.stderr)
        return 2
    rd = open_run(args)
    if rd is None:
        return 2
    # One driver per run: the lock is taken before anything is looked at or swept, and kept.
    try:
        if args.detach:
            if driver_lock.is_held(rd.driver_lock):
                raise driver_lock.RunLocked(f"another driver holds {rd.driver_lock}")
        else:
            driver_lock.acquire(rd.driver_lock)
    except driver_lock.RunLocked as e:
        print(f"run {rd.root.name}: {e}; it is being driven (bin/status shows it; bin/kill stops it)", file=sys.stderr)
        return 2
    journal = Journal(rd.db)
    driver = DriverInfo.of(journal, rd.driver_lock)
    if driver.alive():
        print(f"run {rd.root.name} still has a live driver (pid {driver.pid}); bin/kill it first", file=sys.stderr)
        return 2
    run = journal.run()
    # The same cluster options as the original launch (simulated GPUs, address, dashboard).
    launch_args = _launch_parser().parse_args(json.loads(run["args"])["argv"])
    if args.detach:
        journal.close()
        return _detach_resume(argv, rd, args.json)
    swept = sweep(journal, rd.root.name)
    opts = _cluster_options(launch_args)
    shape, declare = planned_local_shape(opts) if not opts.address else (None, None)
    try:
        plan = load_plan(rd.plan, cluster=shape, base_dir=Path(run["plan_file"]).parent)
        env = {name: rundir.job_env(job) for name, job in plan.jobs.items()}
    except PlanError as e:
        return _plan_problems(e)
    except KeyError as e:
        print(f"{rd.plan}: {e.args[0]}; nothing was started", file=sys.stderr)
        return 2
    _setup_logging(rd.driver_log)
    me = psutil.Process()
    journal.set_run(driver_pid=me.pid, driver_create_time=procs.start_time(me), driver_host=socket.gethostname(),
                    state="running", ended=None)
    journal.event("resume", f"resumed by bin/resume; swept {len(swept)} leftover process(es)", pids=swept)
    print(f"resuming run {rd.root.name}\n  dir {rd.root}" + (f"\n  swept leftover pids {swept}" if swept else ""), flush=True)
    return run_driver(plan, rd, journal, env, opts, declare, None, Console(soft_wrap=True), launch_args.order)


def _detach_resume(argv: list[str], rd: RunDir, as_json: bool = False) -> int:
    child = [a for a in argv if a not in ("--detach", "--json")]
    with open(rd.root / "driver.out", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "launcher", "resume", *child], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd())
    if as_json:
        print(Detached("resume", rd.root.name, str(rd.root.resolve()), proc.pid, str(rd.root / "driver.out"),
                       str(rd.root.parent)).to_json())
        return 0
    print(f"resuming run {rd.root.name} in the background (driver pid {proc.pid}; log {rd.root / 'driver.out'})")
    return 0


def kill_main(argv: list[str] | None = None) -> int:
    args = cliargs.kill_parser().parse_args(argv)
    rd = open_run(args)
    if rd is None:
        return 2
    # Read-only until the driver is known to be gone: a wedged one may hold the journal's write lock.
    journal = Journal(rd.db, readonly=True)
    try:
        if args.job and journal.job(args.job) is None:
            print(f"run {rd.root.name} has no job {args.job!r}", file=sys.stderr)
            return 2
        driver = DriverInfo.of(journal, rd.driver_lock)
    finally:
        journal.close()
    # With --json the prose goes to stderr, so stdout carries only the result.
    prose = sys.stderr if args.json else sys.stdout

    def done(outcome: str, code: int, swept: list[int] | None = None) -> int:
        if args.json:
            print(KillResult(rd.root.name, args.job, args.force, outcome, driver.pid, sorted(swept or []), code).to_json())
        return code

    if driver.alive():
        request = request_kill(rd.root, args.job, args.force)
        step, taken, waited = kill.await_driver(rd, driver, request, args.job, args.force, args.timeout)
        if step == "done":
            print(f"killed {'job ' + args.job if args.job else 'run'} in {rd.root.name}", file=prose)
            return done("killed", 0)
        if step == "kill_driver":
            with contextlib.redirect_stdout(prose):
                code = kill.force_kill_run(rd, driver, taken, waited)
            return done("driver_killed" if code == 0 else "unanswered", code)
        if step == "give_up":
            print(kill.unanswered(rd.root.name, args.job, args.force, taken, waited, driver.pid), file=sys.stderr)
            return done("unanswered", 1)
        print(f"the driver (pid {driver.pid}) exited before confirming the kill", file=prose, flush=True)
    # No driver: this command is the only writer now; sweep and put the kill on record.
    hit = kill.kill_without_driver(rd, args.job, 0.0 if args.force else 10.0,
                                   "killed by bin/kill (driver not running)", "bin/kill with no live driver")
    print(f"driver not running; swept {len(hit)} leftover process(es); run {rd.root.name} marked killed", file=prose)
    return done("swept", 0, hit)


def logs_main(argv: list[str] | None = None) -> int:
    from launcher import logs   # the logic lives in launcher/logs.py
    return logs.main(argv)


def status_main(argv: list[str] | None = None) -> int:
    """Exit status: the run's state (launcher/exitcodes.py): 0 succeeded, 1 failed/killed, 3 running, 4 driver gone."""
    args = cliargs.status_parser().parse_args(argv)
    rd = open_run(args)
    if rd is None:
        return 2
    if args.watch and not args.json:
        try:
            status.watch(rd, all_jobs=args.all_jobs)
        except KeyboardInterrupt:
            pass
    st = status.collect(rd)
    if args.json:
        print(json.dumps(st, indent=2))
    elif not args.watch:
        status.render(st, all_jobs=args.all_jobs)
    return exitcodes.for_run(st["state"], st.get("driver"))


def cluster_shape_main(args: argparse.Namespace) -> int:
    """`sl cluster status` without --address: the shape a launch here would use (NVML or simulated)."""
    opts = ClusterOptions(simulate_gpus=args.simulate_gpus, gpu_type=args.gpu_type)
    shape, declared = planned_local_shape(opts)
    source = "this machine, simulated GPUs" if declared else "this machine (NVML)"
    if args.json:
        print(json.dumps({"source": source, "nodes": [{"id": n.node_id, "gpus": n.gpus, "gpu_type": n.gpu_type}
                                                       for n in shape.nodes]}, indent=2))
    else:
        print(f"{shape.describe()}  [{source}]")
        for n in shape.nodes:
            print(f"  {n.node_id}: {n.gpus} GPU(s){' ' + n.gpu_type if n.gpu_type else ''}")
    return 0
