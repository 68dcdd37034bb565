"""`sl cluster up|join|status|wait|down` (bin/cluster): the cluster commands."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from launcher import cliargs
from launcher.clusterctl import address, auth, daemons, foreground, gcs, inventory
from launcher.clusterctl.nodespec import DEFAULT_PORT, NodeSpec, Role, temp_dir_problem
from launcher.clusterctl.state import NodeRecord, clear, host_dir


def _versions() -> tuple[str, str]:
    import ray

    from launcher.sl import version
    return version(), ray.__version__


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _spec(args: argparse.Namespace, role: Role, node_ip: str, head: str | None) -> NodeSpec:
    from launcher.cluster import local_gpu_mib, local_gpus
    from launcher.sizes import mib_of

    temp = host_dir(Path(args.state_dir), node_ip) / "ray"
    if temp_dir_problem(temp):
        raise address.AddressProblem(temp_dir_problem(temp))
    count, kind = local_gpus()
    version, ray_version = _versions()
    gpu_mib = mib_of(args.gpu_memory) if args.gpu_memory else (local_gpu_mib() if count else None)
    autoscaling = getattr(args, "autoscaling_config", None)
    return NodeSpec(role, node_ip, temp,
                    args.gpus if args.gpus is not None else count, args.gpu_type or kind, gpu_mib, args.num_cpus,
                    version, ray_version, head_address=head, port=getattr(args, "port", DEFAULT_PORT),
                    dashboard_host=getattr(args, "dashboard_host", "127.0.0.1"),
                    dashboard_port=getattr(args, "dashboard_port", 8265),
                    dashboard=not getattr(args, "no_dashboard", False),
                    autoscaling_config=Path(autoscaling).expanduser().resolve() if autoscaling else None)


def _nodes(addr: str, token: Path | None) -> list[inventory.NodeView]:
    if token is not None and os.environ.get(auth.PATH_ENV) != str(token):
        raise RuntimeError("the token must be in the environment before ray is imported (main() puts it there)")
    return inventory.from_ray_nodes(gcs.node_table(addr))


def _token(args: argparse.Namespace) -> Path:
    return Path(args.token).expanduser() if args.token else auth.default_token_path()


def _already(args: argparse.Namespace, node_ip: str) -> NodeRecord | None:
    rec = NodeRecord.load(host_dir(Path(args.state_dir), node_ip))
    if rec is not None and daemons.marked(rec.marker):
        return rec
    return None


def _start(args: argparse.Namespace, spec: NodeSpec, token: Path, announce: Callable[[NodeRecord], None]) -> int:
    """Detached (the command returns, Ray stays) or, with --foreground, until Ray stops."""
    directory = host_dir(Path(args.state_dir), spec.node_ip)
    if not args.foreground:
        rec = daemons.start(spec, token, directory, _ray_bin(), args.timeout)
        rec.save(directory)
        announce(rec)
        return 0

    def ready(rec: NodeRecord) -> None:
        rec.save(directory)   # `down` from another shell and `status --address auto` find it
        announce(rec)
        print(f"  in the foreground (pid {os.getpid()}): SIGTERM, SIGINT or SIGHUP stops this host's Ray", flush=True)

    out = foreground.run(spec, token, directory, _ray_bin(), args.timeout, ready)
    if out.signum is not None:
        how = f"stopped on {_signal_name(out.signum)}"
    else:
        how = f"Ray stopped by itself (ray start exited with {out.ray_exit}; log {directory / 'ray-start.log'})"
    left = f"; {len(out.left)} process(es) still alive: {[o.pid for o in out.left]}" if out.left else ""
    print(f"{spec.node_ip}: the {spec.role.value} of {spec.head_address or f'{spec.node_ip}:{spec.port}'} {how}{left}",
          file=sys.stderr if out.code else sys.stdout, flush=True)
    return out.code


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def up(args: argparse.Namespace) -> int:
    node_ip = args.node_ip or address.this_host()
    running = _already(args, node_ip)
    if running:
        print(f"this host ({node_ip}) already runs Ray as {running.role.value} of {running.address}; "
              "`bin/cluster down` first", file=sys.stderr)
        return 1
    if args.autoscaling_config and not Path(args.autoscaling_config).expanduser().is_file():
        print(f"--autoscaling-config {args.autoscaling_config}: no such file (`ray up` writes "
              "~/ray_bootstrap_config.yaml on the head before its start commands)", file=sys.stderr)
        return 1
    token, created = auth.ensure_token(_token(args))
    spec = _spec(args, Role.HEAD, node_ip, None)

    def announce(rec: NodeRecord) -> None:
        print(f"head {rec.address} up (Ray {spec.ray_version}, safety-launcher {spec.version}, {spec.gpus} GPU(s)"
              f"{' ' + spec.gpu_type if spec.gpu_type else ''})")
        print(f"  token {token} (0600{', new' if created else ''}): copy it to each worker host, then there:")
        print(f"    bin/cluster join {rec.address}{'' if args.token is None else ' --token PATH'}")
        print(f"  runs: bin/launch PLAN --address {rec.address}")
        if spec.dashboard:
            print(f"  dashboard: http://{spec.dashboard_host}:{spec.dashboard_port} (ssh -L {spec.dashboard_port}:"
                  f"localhost:{spec.dashboard_port} this host)")
        print(f"  stop: bin/cluster down   (log {rec.log})", flush=True)
    return _start(args, spec, token, announce)


def join(args: argparse.Namespace) -> int:
    head = args.address
    node_ip = args.node_ip or address.this_host(toward=head.rsplit(":", 1)[0])
    running = _already(args, node_ip)
    if running:
        print(f"this host ({node_ip}) already runs Ray as {running.role.value} of {running.address}; "
              "`bin/cluster down` first", file=sys.stderr)
        return 1
    token = _token(args)
    auth.read_token(token)
    version, ray_version = _versions()
    problems = inventory.version_problems(_nodes(head, token), version, ray_version)
    if problems:
        print("not joining: " + "; ".join(problems) + ". Install the same versions on every host "
              "(the same checkout and `bin/launch --help` once, which bootstraps it).", file=sys.stderr)
        return 1
    spec = _spec(args, Role.WORKER, node_ip, head)

    def announce(rec: NodeRecord) -> None:
        print(f"joined {head} as {node_ip} ({spec.gpus} GPU(s){' ' + spec.gpu_type if spec.gpu_type else ''}); "
              f"stop: bin/cluster down", flush=True)
    return _start(args, spec, token, announce)


def _own_records(state_dir: Path, node_ip: str | None) -> list[NodeRecord]:
    ips = [node_ip] if node_ip else [str(i.ip) for ifs in address.ipv4_addresses().values() for i in ifs]
    recs = [NodeRecord.load(host_dir(state_dir, ip)) for ip in ips]
    return [r for r in recs if r is not None]


def status(args: argparse.Namespace) -> int:
    if not args.address:
        from launcher.cli import cluster_shape_main
        return cluster_shape_main(args)
    addr = args.address
    if addr == "auto":
        recs = _own_records(Path(args.state_dir), None)
        addr = recs[0].address if recs else "auto"
    token = _token(args)
    nodes = _nodes(addr, token if token.exists() else None)
    version, ray_version = _versions()
    problems = inventory.version_problems(nodes, version, ray_version)
    if args.json:
        print(json.dumps({"source": f"Ray cluster at {addr}", "nodes": [n.to_json() for n in nodes],
                          "problems": problems}, indent=2))
    else:
        alive = [n for n in nodes if n.alive]
        print(f"Ray cluster at {addr}: {len(alive)} node(s) alive, {sum(n.gpus for n in alive)} GPU(s)")
        for n in nodes:
            mem = f", {n.gpu_mib} MiB each" if n.gpu_mib else ""
            print(f"  {n.ip:<15} {n.role or '-':<6} {'alive' if n.alive else 'DEAD':<5} {n.gpus} GPU(s)"
                  f"{' ' + n.gpu_type if n.gpu_type else ''}{mem}, {n.cpus} CPUs, Ray {n.ray_version or '?'}, "
                  f"safety-launcher {n.version or '?'}  {n.node_id[:8]}")
        for p in problems:
            print(f"  version mismatch: {p}")
    return 1 if problems else 0


def wait(args: argparse.Namespace) -> int:
    """Until `--nodes` nodes are alive, or the deadline: one process asking the GCS each second (a
    `status` per look would cost a Python and Ray start-up each on a busy head)."""
    host, _, port = args.address.rpartition(":")
    token = _token(args)
    deadline = time.monotonic() + args.timeout
    nodes: list[inventory.NodeView] = []
    unanswered = ""
    while True:
        if address.reachable(host, int(port)):
            if token.exists() and os.environ.get(auth.PATH_ENV) != str(token) and "ray" not in sys.modules:
                os.environ.update(auth.auth_env(token))   # a head started beside this command wrote it since
            try:
                nodes = _nodes(args.address, token if token.exists() else None)
            except gcs.Unreachable as e:   # listening, not answering yet: the GCS is still starting (or a wrong token)
                nodes, unanswered = [], f"; last answer: {e}"
        if sum(n.alive for n in nodes) >= args.nodes:
            print(f"{args.address}: {inventory.alive_summary(nodes)}", flush=True)
            return 0
        if time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    if not address.reachable(host, int(port)):
        print(f"nothing answers at {args.address} after {args.timeout:.0f}s: the head is not up (see its "
              "ray-start.log, or the head step's output)", file=sys.stderr)
    else:
        print(f"{args.address}: {inventory.alive_summary(nodes)}, not the {args.nodes} waited for, after "
              f"{args.timeout:.0f}s (a node that did not join: its step's output and ray-start.log say why)"
              f"{unanswered if not nodes else ''}", file=sys.stderr)
    return 1


def down(args: argparse.Namespace) -> int:
    recs = _own_records(Path(args.state_dir), args.node_ip)
    if not recs:
        print(f"nothing to stop: no Ray started by bin/cluster on this host ({args.state_dir})")
        return 0
    rc = 0
    for rec in recs:
        left = daemons.stop(rec)
        if left:
            print(f"{rec.node_ip}: {len(left)} process(es) still alive: {[o.pid for o in left]}", file=sys.stderr)
            rc = 1
        else:
            clear(host_dir(Path(args.state_dir), rec.node_ip))
            print(f"{rec.node_ip}: stopped the {rec.role.value} of {rec.address}")
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in cliargs.CLUSTER_ACTIONS and argv[0] not in ("-h", "--help"):
        argv = ["status", *argv]   # `sl cluster [--address A] [--json]`, as before the actions
    args = cliargs.cluster_parser().parse_args(argv)
    token = _token(args) if hasattr(args, "token") else None
    if args.action in ("join", "status", "wait") and token is not None and token.exists():
        # Before ray is imported: Ray reads the mode once, when it loads.
        os.environ.update(auth.auth_env(token))
    try:
        return {"up": up, "join": join, "status": status, "wait": wait, "down": down}[args.action](args)
    except (address.AddressProblem, auth.TokenProblem, daemons.StartFailed, gcs.Unreachable) as e:
        print(f"sl cluster {args.action}: {e}", file=sys.stderr)
        return 1
