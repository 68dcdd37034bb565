"""Which address this host's Ray advertises. Ray's own guess routes to a public address and, on a
host with no default route (a private cluster network, a test namespace), falls back to
127.0.0.1, which no other host can reach; so we choose, and say how to override."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path

import psutil


class AddressProblem(RuntimeError):
    pass


def ipv4_addresses() -> dict[str, list[ipaddress.IPv4Interface]]:
    """Interface -> its IPv4 addresses with their networks, loopback left out (this network namespace's only)."""
    out: dict[str, list[ipaddress.IPv4Interface]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        ips = [ipaddress.IPv4Interface(f"{a.address}/{a.netmask or '32'}") for a in addrs
               if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback]
        if ips:
            out[name] = ips
    return out


def default_route_interface(route_table: str | None = None) -> str | None:
    """The interface of the IPv4 default route, from /proc/net/route (no packet sent anywhere)."""
    if route_table is None:
        try:
            route_table = Path("/proc/net/route").read_text()
        except OSError:
            return None
    for line in route_table.splitlines()[1:]:
        f = line.split()
        if len(f) > 2 and f[1] == "00000000":
            return f[0]
    return None


def choose(addresses: dict[str, list[ipaddress.IPv4Interface]], default_iface: str | None, toward: str | None = None) -> str:
    """This host's address: the one on the head's subnet when joining (`toward`), else the default
    route's, else the only one there is; several and nothing to choose by is an error naming them."""
    if toward:
        try:
            head = ipaddress.ip_address(toward)
        except ValueError:
            head = None   # a host name: fall through to the default route
        if head is not None:
            for ips in addresses.values():
                for ip in ips:
                    if head in ip.network:
                        return str(ip.ip)
    if default_iface and addresses.get(default_iface):
        return str(addresses[default_iface][0].ip)
    flat = [str(ip.ip) for ips in addresses.values() for ip in ips]
    if len(flat) == 1:
        return flat[0]
    if not flat:
        raise AddressProblem("this host has no IPv4 address besides loopback; other hosts could not reach it "
                             "(pass --node-ip ADDRESS)")
    listed = ", ".join(f"{ip.ip} ({name})" for name, ips in sorted(addresses.items()) for ip in ips)
    raise AddressProblem(f"this host has several addresses and no default route to choose by: {listed}; "
                         "pass --node-ip ADDRESS (the one the other hosts reach it on)")


def this_host(toward: str | None = None) -> str:
    return choose(ipv4_addresses(), default_route_interface(), toward)


def interface_of(ip: str) -> str | None:
    """The interface holding `ip` on this host, None if none does."""
    for name, ifs in ipv4_addresses().items():
        if any(str(i.ip) == ip for i in ifs):
            return name
    return None


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections there: asked before ray.init, which takes some 15 s
    to give up on an address where nothing listens yet."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    """`python -m launcher.clusterctl.address [--toward IP]`: the address `bin/cluster up|join` would
    advertise here (cluster/slurm.sbatch asks the head's node for it before starting anything)."""
    p = argparse.ArgumentParser(prog="python -m launcher.clusterctl.address", description=main.__doc__)
    p.add_argument("--toward", metavar="IP",
                   help="prefer the address on this IP's subnet (a worker's, toward its head)")
    args = p.parse_args(argv)
    try:
        print(this_host(args.toward))
    except AddressProblem as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
