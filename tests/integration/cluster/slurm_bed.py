"""A Slurm cluster on this one machine for tests: munged, slurmctld and one slurmd per Slurm node
(`NodeName=n1 NodeHostname=<this host> Port=...`: several nodes on one host), all started here as
children with every file under one short directory in /tmp, and stopped by the PIDs started.

The directory is short and 0755: munged wants its socket's directory searchable by all, and Ray's
sockets end up under it (the job's SL_CLUSTER_STATE), which must stay under 108 bytes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.helpers import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel")
START_S = 60.0


def why_not() -> str | None:
    """Why no bed can be made here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as their user; SlurmUser=root here)"
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"Slurm or MUNGE not installed: {', '.join(missing)} not on PATH (apt-get install slurm-wlm munge)"
    return None


@dataclass
class SlurmBed:
    root: Path
    nodes: list[str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    def run(self, *argv: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=kw.pop("env", self.env()), capture_output=True, text=True,
                              timeout=timeout, **kw)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        out = open(self.root / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(argv, env=env or self.env(), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()

    def idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", timeout=20)
        states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
        return out.returncode == 0 and all(states.get(n) == "idle" for n in self.nodes)

    def ours(self) -> list[psutil.Process]:
        """Every live process carrying this bed's slurm.conf: its daemons, slurmstepd, the jobs' processes."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("SLURM_CONF") == str(self.conf) and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def job_processes(self, job_id: str) -> list[str]:
        """What still runs of a job: processes with its SLURM_JOB_ID (Ray's daemons would be among them)."""
        out = []
        for p in self.ours():
            try:
                if p.environ().get("SLURM_JOB_ID") == job_id:
                    out.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return out

    def teardown(self) -> list[str]:
        """Stop the daemons started here (slurmd first), then anything still carrying this bed's conf;
        returns what would not die (should be nothing), and removes the directory."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user", "root", timeout=30)   # a test that failed mid-job: its steps end first
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.run("squeue", "-h", timeout=20).stdout.strip():
                time.sleep(1)
        for name in sorted(self.procs, key=lambda n: (not n.startswith("slurmd"), n != "slurmctld")):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        stray = self.ours()
        for p in stray:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(stray, timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
        return [f"{p.pid} {p.name()}" for p in alive]


def _conf(root: Path, host: str, nodes: list[str], ctld_port: int, node_ports: list[int], cpus: int) -> str:
    node_lines = "\n".join(f"NodeName={n} NodeHostname={host} Port={p} CPUs={cpus} RealMemory=1000 State=UNKNOWN"
                           for n, p in zip(nodes, node_ports))
    return f"""ClusterName=sltest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={root}/munge.sock,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.%n.log
PlugStackConfig={root}/plugstack.conf
# no cgroups here: processes are tracked by their parents
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
MinJobAge=600
{node_lines}
PartitionName=test Nodes={','.join(nodes)} Default=YES MaxTime=INFINITE State=UP
"""


def start(nodes: int = 2, cpus: int = 2) -> SlurmBed:
    """munged, slurmctld and `nodes` slurmd, all idle; the bed is torn down again if that fails."""
    root = Path("/tmp") / f"slm{secrets.token_hex(3)}"
    root.mkdir(mode=0o755)
    root.chmod(0o755)   # the umask may have taken bits off
    for d in ("key", "state", "spool"):
        (root / d).mkdir(mode=0o700)
    (root / "key" / "munge.key").write_bytes(secrets.token_bytes(1024))
    (root / "key" / "munge.key").chmod(0o600)
    (root / "plugstack.conf").write_text("")
    names = [f"n{i + 1}" for i in range(nodes)]
    host = socket.gethostname()
    (root / "slurm.conf").write_text(_conf(root, host, names, free_port(), [free_port() for _ in names], cpus))
    bed = SlurmBed(root, names)
    try:
        bed._spawn("munged", ["munged", "-F", f"--key-file={root}/key/munge.key", f"--socket={root}/munge.sock",
                              f"--pid-file={root}/key/munged.pid", f"--log-file={root}/key/munged.log",
                              f"--seed-file={root}/key/munged.seed"])
        _until(lambda: (root / "munge.sock").exists(), 20, "munged made no socket", bed)
        bed._spawn("slurmctld", ["slurmctld", "-D", "-f", str(bed.conf)])
        _until(lambda: bed.run("scontrol", "ping", timeout=20).stdout.count("UP") > 0, START_S,
               "slurmctld does not answer", bed)
        for n in names:
            bed._spawn(f"slurmd-{n}", ["slurmd", "-D", "-N", n, "-f", str(bed.conf)])
        _until(bed.idle, START_S, "the nodes did not become idle", bed)
        return bed
    except BaseException:
        bed.teardown()
        raise


def _until(ready, timeout: float, what: str, bed: SlurmBed) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [name for name, p in bed.procs.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited: {_logs(bed)}")
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} within {timeout:.0f}s: {_logs(bed)}")


def _logs(bed: SlurmBed) -> str:
    out = []
    for f in sorted(bed.root.glob("*.out")) + sorted(bed.root.glob("*.log")):
        lines = f.read_text(errors="replace").splitlines()[-6:]
        out.append(f"--- {f.name}\n" + "\n".join(lines))
    return "\n".join(out)
