"""The argument parsers of `sl launch|status|kill|resume|cluster`, stdlib only.

Kept apart from launcher/cli.py (which imports pydantic, rich, psutil: about a second) so that
`sl CMD --help` and shell completion answer at once, even before the venv exists. The three
constants below mirror scheduling.policy.names(), status.FOLD_OVER and kill.FORCE_PATIENCE_S without
importing those modules; tests/unit/launcher/test_cli_parsers.py checks they agree.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from launcher import exitcodes
from launcher.sizes import mib_of
from launcher.runarg import add_run_arguments, default_runs_dir


def _size(text: str) -> int:
    try:
        return mib_of(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None

ORDERS = ("backfill", "greedy", "fifo", "critical-path")
FOLD_OVER = 50
FORCE_PATIENCE_S = 10.0


def launch_parser(prog: str = "sl launch") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run an experiment plan on Ray.",
                                epilog="exit status: 0 the run succeeded (or --dry-run/--detach done), 1 it failed "
                                       "or was killed, 2 a bad plan or bad arguments (nothing started)")
    p.add_argument("plan", help="plan YAML file (`sl examples` lists the shipped ones)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a plan value, e.g. --set jobs.lisa.params.rho=1 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded jobs and start nothing")
    p.add_argument("--address", help="join an existing Ray cluster (auto or HOST:PORT) instead of starting one")
    p.add_argument("--wait-for-nodes", type=float, default=300.0, metavar="SECONDS",
                   help="with --address: wait up to this long for the nodes the plan needs to join (default 300; 0: "
                        "refuse at once)")
    p.add_argument("--simulate-gpus", type=int, metavar="N", help="declare N logical GPUs (default 2 where no GPU is found)")
    p.add_argument("--gpu-type", help="GPU type declared for the local node when simulating (e.g. H20)")
    p.add_argument("--simulate-gpu-memory", type=_size, metavar="SIZE",
                   help="memory of each simulated GPU, e.g. 24GiB: jobs whose need is known share GPUs by it "
                        "(without it simulated GPUs are never shared)")
    p.add_argument("--runs-dir", type=Path, default=default_runs_dir(), help="where run directories go (default: ./runs)")
    p.add_argument("--run-id", help="name of the run directory (default: <plan>-<time>-<random>)")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="dashboard bind address (default: localhost only)")
    p.add_argument("--dashboard-port", type=int, default=None,
                   help="dashboard port (default: 8265, or the next free one when another run has it)")
    p.add_argument("--detach", action="store_true", help="run the driver in its own session and return at once")
    p.add_argument("--json", action="store_true",
                   help="with --detach: print the run id, directory, driver pid and log as JSON")
    p.add_argument("--order", choices=ORDERS, default="backfill",
                   help="scheduling policy: backfill (critical path in seconds, with a reservation for the most "
                        "critical job that does not fit), greedy (critical path, no reservation), fifo (plan "
                        "order, for comparison); critical-path is backfill's old name")
    return p


def status_parser(prog: str = "sl status") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Show a run's jobs from its journal.", epilog=exitcodes.HELP)
    add_run_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (a stable contract)")
    p.add_argument("--watch", action="store_true", help="a live table until the run ends")
    p.add_argument("--all", action="store_true", dest="all_jobs",
                   help=f"list every job (over {FOLD_OVER} jobs, succeeded/pending/skipped ones are counted, not listed)")
    return p


def kill_parser(prog: str = "sl kill") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Stop a run or one of its jobs, leaving no process behind.",
                                epilog="exit status: 0 killed (or swept), 1 the driver did not confirm in time, "
                                       "2 no such run or job")
    add_run_arguments(p, required=True)
    p.add_argument("job", nargs="?", help="only this job (its dependants are then skipped)")
    p.add_argument("--force", action="store_true",
                   help="SIGKILL at once instead of TERM, grace, KILL; for the whole run, also SIGKILL a driver "
                        f"that has not read the request within {FORCE_PATIENCE_S:.0f}s")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the driver to confirm")
    p.add_argument("--json", action="store_true", help="print what was done as JSON (outcome, swept pids)")
    return p


def resume_parser(prog: str = "sl resume") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Continue a run whose driver died or was killed: "
                                "finished jobs are kept, the others continue from their newest complete checkpoint.",
                                epilog="exit status: as sl launch; 2 also when another driver holds the run")
    add_run_arguments(p)
    p.add_argument("--detach", action="store_true", help="run the driver in its own session and return")
    p.add_argument("--json", action="store_true", help="with --detach: print the run, driver pid and log as JSON")
    return p


CLUSTER_ACTIONS = ("up", "join", "status", "wait", "down")
CLUSTER_STATE = "/tmp/sl-cluster"


def _node_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node-ip", help="the address other hosts reach this one on (default: the default route's, "
                   "else the only one; Ray's own guess falls back to 127.0.0.1 without a default route)")
    p.add_argument("--gpus", type=int, metavar="N", help="GPUs to declare (default: NVML's count, 0 without)")
    p.add_argument("--gpu-type", help="GPU type to declare (default: NVML's name: H20, A100, ...)")
    p.add_argument("--gpu-memory", metavar="SIZE", help="memory per GPU for packing, e.g. 24GiB (default: NVML's)")
    p.add_argument("--num-cpus", type=int, metavar="N", help="CPUs to declare (default: Ray's count)")
    p.add_argument("--token", metavar="PATH", help="the Ray auth token file (default ~/.ray/auth_token; the head "
                   "creates it 0600, workers need a copy)")
    p.add_argument("--state-dir", default=CLUSTER_STATE, help=f"where this host's Ray keeps its files (default "
                   f"{CLUSTER_STATE}/ADDRESS; per host, so hosts may share a filesystem)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for Ray to start (default 180)")
    p.add_argument("--foreground", action="store_true", help="stay in the foreground until Ray stops (a Slurm step: "
                   "`srun bin/cluster up --foreground`); SIGTERM, SIGINT or SIGHUP stop this host's Ray as down does")


def cluster_parser(prog: str = "sl cluster") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Start, join, inspect and stop a Ray cluster for runs "
                                "(token auth on, dashboard on localhost). Without an action: status.",
                                epilog="exit status: 0 done; 1 failed (Ray did not start, a version differs); "
                                       "2 bad arguments")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    up = sub.add_parser("up", help="start the head on this host")
    _node_options(up)
    up.add_argument("--port", type=int, default=6379, help="the head's GCS port (default 6379)")
    up.add_argument("--dashboard-host", default="127.0.0.1", help="dashboard bind address (default 127.0.0.1)")
    up.add_argument("--dashboard-port", type=int, default=8265)
    up.add_argument("--no-dashboard", action="store_true", help="start no dashboard")
    up.add_argument("--autoscaling-config", metavar="PATH", help="Ray's autoscaler config, passed to `ray start` "
                    "(ray up's head command: --autoscaling-config=~/ray_bootstrap_config.yaml; without it Ray's "
                    "monitor never starts the workers)")
    join = sub.add_parser("join", help="join this host to a head as a worker")
    join.add_argument("address", metavar="HEAD:PORT")
    _node_options(join)
    st = sub.add_parser("status", help="nodes, GPUs, GPU types and versions (this machine's without --address)")
    st.add_argument("--address", help="a running cluster (HOST:PORT, or auto: the one this host started or joined)")
    st.add_argument("--token", metavar="PATH", help="the Ray auth token file (default ~/.ray/auth_token)")
    st.add_argument("--state-dir", default=CLUSTER_STATE)
    st.add_argument("--simulate-gpus", type=int, metavar="N", help="as sl launch: N logical GPUs on this machine")
    st.add_argument("--gpu-type", help="as sl launch: the GPU type declared when simulating")
    st.add_argument("--json", action="store_true", help="machine-readable: {\"source\", \"nodes\": [...]}")
    wt = sub.add_parser("wait", help="wait until a cluster has N live nodes (exit 1 with what joined at the deadline)")
    wt.add_argument("address", metavar="HEAD:PORT")
    wt.add_argument("--nodes", type=int, required=True, metavar="N", help="live nodes to wait for, the head included")
    wt.add_argument("--timeout", type=float, default=600.0, help="seconds to wait in all (default 600)")
    wt.add_argument("--token", metavar="PATH", help="the Ray auth token file (default ~/.ray/auth_token)")
    down = sub.add_parser("down", help="stop what up/join started on this host (nothing else)")
    down.add_argument("--node-ip", help="which of this host's records (default: all this host's addresses)")
    down.add_argument("--state-dir", default=CLUSTER_STATE)
    return p


PARSERS = {"launch": launch_parser, "status": status_parser, "kill": kill_parser, "resume": resume_parser,
           "cluster": cluster_parser}
