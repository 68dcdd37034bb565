"""A test bed of real hosts on one machine: Linux network namespaces joined by veth pairs on a
private bridge, addresses in 198.18.0.0/24 (RFC 2544's benchmarking range), no default route.

Each host also has its own host name, PID space and /proc (UTS, PID and mount namespaces, with
an init that reaps orphans): a process on one host cannot see or signal another host's PIDs, and
`socket.gethostname()` differs, so cross-host commands are tested as they meet separate servers.
The filesystem is shared, as NFS would be.

The bridge lives in its own namespace too, so the machine's own network is never touched and
nothing a test sends can leave the namespaces made here. Names carry a random tag (several beds
may exist at once) and the owner's PID: a bed whose owner died (a killed test run) is removed by
the next one, so a leftover never breaks a later run. Everything is `ip` with argv lists.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "slt"
SUBNET = "198.18.0"
NAME_RE = re.compile(rf"^{PREFIX}([0-9a-f]{{4}})p(\d+)(sw|h\d)$")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def why_not() -> str | None:
    """None where namespaces can be made here; else the reason (tests skip with it)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    return None


def namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pids_in(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split()]


def _kill_all_in(ns: str, grace: float = 5.0) -> list[int]:
    """Every process in a namespace we made is ours (the namespace is the proof): TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _pids_in(ns):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while _pids_in(ns) and time.time() < deadline:
            time.sleep(0.1)
    return _pids_in(ns)


def _remove(ns: str) -> None:
    _kill_all_in(ns)
    _ip("netns", "delete", ns, check=False)
    Path(f"/tmp/{ns}.hosts").unlink(missing_ok=True)


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def sweep_orphans() -> list[str]:
    """Remove beds whose owning process is gone; returns the namespaces removed."""
    gone = []
    for ns in namespaces():
        m = NAME_RE.match(ns)
        if m and not _owner_alive(int(m.group(2))):
            _remove(ns)
            gone.append(ns)
    return gone


# PID 1 of a host: its name (and /etc/hosts, in its own mount namespace, so the name resolves),
# then a reaper, as init does: orphans (daemons that double-forked) must not linger as zombies.
INIT = r"""
hostname "$1"
printf '127.0.0.1 localhost\n%s %s\n' "$2" "$1" > "$3"
mount --bind "$3" /etc/hosts
exec python3 -c 'import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)'
"""


@dataclass
class Host:
    ns: str
    ip: str
    port_if: str        # the bridge side of this host's veth, in the switch namespace (link down = cut off)
    init_pid: int = 0   # the host's PID 1, as the machine's PID namespace numbers it
    unshare_pid: int = 0   # its parent, `unshare`, which made the namespaces

    @property
    def name(self) -> str:
        return self.ns

    def argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.init_pid), "--net", "--uts", "--pid", "--mount", "--", *argv]

    def run(self, argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout, **kw)

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv), **kw)

    def pids(self) -> list[int]:
        """What runs on the host, its init and the `unshare` above it (the bed's own) left out."""
        return [p for p in _pids_in(self.ns) if p not in (self.init_pid, self.unshare_pid)]


@dataclass
class TestBed:
    tag: str
    switch: str
    hosts: list[Host] = field(default_factory=list)

    def link(self, host: Host, up: bool) -> None:
        """Cut a host off the network (or reconnect it), as a pulled cable would."""
        _ip("-n", self.switch, "link", "set", host.port_if, "up" if up else "down")

    def teardown(self) -> list[int]:
        """Kill every process in the hosts, delete the namespaces; returns PIDs that would not die."""
        left = []
        for h in self.hosts:
            left += _kill_all_in(h.ns)
            _ip("netns", "delete", h.ns, check=False)
            Path(f"/tmp/{h.ns}.hosts").unlink(missing_ok=True)
        _ip("netns", "delete", self.switch, check=False)
        return left


def _start_init(host: Host) -> tuple[int, int]:
    """Start the host's PID 1 (inside its network namespace): (unshare's PID, the init's), as seen from here."""
    hosts_file = f"/tmp/{host.ns}.hosts"
    unshare = subprocess.Popen(["ip", "netns", "exec", host.ns, "unshare", "--uts", "--pid", "--mount", "--fork",
                                "--mount-proc", "bash", "-c", INIT, "init", host.ns, host.ip, hosts_file],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            kids = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
        except FileNotFoundError:
            kids = []
        # Ready once it is the reaper (the name and the hosts file are set before the exec).
        if kids and b"python3" in Path(f"/proc/{kids[0]}/cmdline").read_bytes():
            return unshare.pid, int(kids[0])
        time.sleep(0.05)
    raise RuntimeError(f"the init of {host.ns} did not start")


def create(n_hosts: int = 3) -> TestBed:
    sweep_orphans()
    tag = f"{PREFIX}{secrets.token_hex(2)}p{os.getpid()}"
    bed = TestBed(tag, f"{tag}sw")
    try:
        _ip("netns", "add", bed.switch)
        _ip("-n", bed.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", bed.switch, "link", "set", "br0", "up")
        for i in range(n_hosts):
            ns = f"{tag}h{i}"
            _ip("netns", "add", ns)
            host = Host(ns, f"{SUBNET}.{10 + i}", f"p{i}")
            bed.hosts.append(host)
            # The pair is made inside the host and one end moved to the switch: the root namespace never holds either.
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", host.port_if, "netns", bed.switch)
            _ip("-n", bed.switch, "link", "set", host.port_if, "master", "br0")
            _ip("-n", bed.switch, "link", "set", host.port_if, "up")
            _ip("-n", ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            host.unshare_pid, host.init_pid = _start_init(host)
    except BaseException:
        bed.teardown()
        raise
    return bed
