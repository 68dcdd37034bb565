"""`sl cluster up|join|status|down` (bin/cluster): the cluster commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from launcher import cliargs
from launcher.clusterctl import address, auth, daemons, inventory
from launcher.clusterctl.nodespec import DEFAULT_PORT, NodeSpec, Role, temp_dir_problem
from launcher.clusterctl.state import NodeRecord, host_dir


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
    return NodeSpec(role, node_ip, temp,
                    args.gpus if args.gpus is not None else count, args.gpu_type or kind, gpu_mib, args.num_cpus,
                    version, ray_version, head_address=head, port=getattr(args, "port", DEFAULT_PORT),
                    dashboard_host=getattr(args, "dashboard_host", "127.0.0.1"),
                    dashboard_port=getattr(args, "dashboard_port", 8265),
                    dashboard=not getattr(args, "no_dashboard", False))


def _connect(addr: str, token: Path | None) -> None:
    import ray

    if token is not None and os.environ.get(auth.PATH_ENV) != str(token):
        raise RuntimeError("the token must be in the environment before ray is imported (main() puts it there)")
    ray.init(address=addr, log_to_driver=False, logging_level="ERROR")


def _nodes(addr: str, token: Path | None) -> list[inventory.NodeView]:
    import ray

    _connect(addr, token)
    try:
        return inventory.from_ray_nodes(ray.nodes())
    finally:
        ray.shutdown()


def _token(args: argparse.Namespace) -> Path:
    return Path(args.token).expanduser() if args.token else auth.default_token_path()


def _already(args: argparse.Namespace, node_ip: str) -> NodeRecord | None:
    rec = NodeRecord.load(host_dir(Path(args.state_dir), node_ip))
    if rec is not None and daemons.marked(rec.marker):
        return rec
    return None


def up(args: argparse.Namespace) -> int:
    node_ip = args.node_ip or address.this_host()
    running = _already(args, node_ip)
    if running:
        print(f"this host ({node_ip}) already runs Ray as {running.role.value} of {running.address}; "
              "`bin/cluster down` first", file=sys.stderr)
        return 1
    token, created = auth.ensure_token(_token(args))
    spec = _spec(args, Role.HEAD, node_ip, None)
    rec = daemons.start(spec, token, host_dir(Path(args.state_dir), node_ip), _ray_bin(), args.timeout)
    rec.save(host_dir(Path(args.state_dir), node_ip))
    print(f"head {rec.address} up (Ray {spec.ray_version}, safety-launcher {spec.version}, {spec.gpus} GPU(s)"
          f"{' ' + spec.gpu_type if spec.gpu_type else ''})")
    print(f"  token {token} (0600{', new' if created else ''}): copy it to each worker host, then there:")
    print(f"    bin/cluster join {rec.address}{'' if args.token is None else ' --token PATH'}")
    print(f"  runs: bin/launch PLAN --address {rec.address}")
    if spec.dashboard:
        print(f"  dashboard: http://{spec.dashboard_host}:{spec.dashboard_port} (ssh -L {spec.dashboard_port}:"
              f"localhost:{spec.dashboard_port} this host)")
    print(f"  stop: bin/cluster down   (log {rec.log})")
    return 0


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
    rec = daemons.start(spec, token, host_dir(Path(args.state_dir), node_ip), _ray_bin(), args.timeout)
    rec.save(host_dir(Path(args.state_dir), node_ip))
    print(f"joined {head} as {node_ip} ({spec.gpus} GPU(s){' ' + spec.gpu_type if spec.gpu_type else ''}); "
          f"stop: bin/cluster down")
    return 0


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
            (host_dir(Path(args.state_dir), rec.node_ip) / "node.json").unlink(missing_ok=True)
            print(f"{rec.node_ip}: stopped the {rec.role.value} of {rec.address}")
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in cliargs.CLUSTER_ACTIONS and argv[0] not in ("-h", "--help"):
        argv = ["status", *argv]   # `sl cluster [--address A] [--json]`, as before the actions
    args = cliargs.cluster_parser().parse_args(argv)
    token = _token(args) if hasattr(args, "token") else None
    if args.action in ("join", "status") and token is not None and token.exists():
        # Before ray is imported: Ray reads the mode once, when it loads.
        os.environ.update(auth.auth_env(token))
    try:
        return {"up": up, "join": join, "status": status, "down": down}[args.action](args)
    except (address.AddressProblem, auth.TokenProblem, daemons.StartFailed) as e:
        print(f"sl cluster {args.action}: {e}", file=sys.stderr)
        return 1
