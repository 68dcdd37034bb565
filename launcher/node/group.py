"""RankGroup: one node's share of one attempt's ranks, held by that node's long-lived NodeHost.

It spawns the local rank processes, reads their heartbeats, reports exits with the tail of their
logs, and kills their process trees on request. Training never runs inside the host: a rank stuck
in a collective cannot be interrupted from inside, but its process group can be killed whole.
The GPUs are the ones Ray reserved for the job's placement-group bundle (see node/host.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable


from launcher import agentlog, heartbeat, monitor, oomkill, procs, release
from launcher.clusterctl import address
from launcher.layout import JobDir
from launcher.memprobe import open_probe
from launcher.node.messages import AgentReport, BundleInfo, NewChild, RankStatus, SpawnedRank, Started, Stopped

REPO_ROOT = Path(__file__).resolve().parent.parent
# py-spy ships as a binary next to the interpreter of the venv it was installed in.
PY_SPY = shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])) or "py-spy"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return [line.decode(errors="replace") for line in deque(f.read().splitlines(), maxlen=lines)]
    except FileNotFoundError:
        return []


class RankGroup:
    def __init__(self, run_id: str, job: str, attempt: int, node_rank: int, ranks: list[int], world_size: int,
                 job_dir: str, bundle: BundleInfo, spawn: Callable[..., tuple[Any, procs.Owned]] = procs.spawn):
        self.bundle, self.spawn = bundle, spawn
        self.run_id, self.job, self.attempt = run_id, job, attempt
        self.node_rank, self.ranks, self.world_size = node_rank, ranks, world_size
        self.jd = JobDir(Path(job_dir))
        self.children: dict[int, tuple[Any, procs.Owned]] = {}
        self.known: dict[int, procs.Owned] = {}
        self.probe = None
        self.oom: dict[int, oomkill.OomCounter | None] = {}   # rank -> its OOM counter, settled (oomkill.settled)
        self.oom_read: dict[int, oomkill.OomCounter | None] = {}   # rank -> what the last poll read
        self.oom_killed: dict[int, str | None] = {}           # rank -> decided once, when its exit is first seen
        self.exits_seen = 0                                   # ranks exited as of wait_exit's last return
        self.exited_at: dict[int, float] = {}
        # The agent's own output (monitor errors, tracebacks) into the run directory, not only Ray's temp dir.
        self.own_log = agentlog.open_agent_log(agentlog.agent_log(self.jd, attempt, node_rank),
                                               f"agent of {job} attempt {attempt} node rank {node_rank} "
                                               f"(ranks {ranks}) in run {run_id}")

    def info(self) -> dict[str, Any]:
        b = self.bundle
        return {"node": b.node, "ip": b.ip, "host": b.host, "gpus": list(b.gpus), "pid": os.getpid()}

    def start(self, job_file: str, master_addr: str | None, master_port: int | None,
              extra_env: dict[str, str]) -> Started:
        """Spawn this node's ranks. Without a master address (single-node job) this agent is rank 0's."""
        # Fault point for the launcher's tests: a node this slow to start (what bin/kill meets while `starting`).
        time.sleep(float(os.environ.get("SL_FAULT_AGENT_START_DELAY_S", "0")))
        info = self.info()
        master_addr = master_addr or info["ip"]
        master_port = master_port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k == "RAY_ADDRESS"}
        env.update(extra_env)
        self.shared = "SL_GPU_SHARE_MIB" in extra_env   # a packed job: its GPU has other tenants
        # All local ranks see the job's GPUs on this node; LOCAL_RANK picks one (NCCL peer-to-peer).
        env["CUDA_VISIBLE_DEVICES"] = ",".join(info["gpus"])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["OMP_NUM_THREADS"] = extra_env.get("OMP_NUM_THREADS", "1")   # not the actor's (Ray sets it to num_cpus)
        # The venv's bin first, as when it is activated: DeepSpeed's JIT ops are built with the first
        # `ninja` on PATH, and two ninja versions alternating rebuild them (a minute of CPU) every start.
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([venv_bin, *(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)])
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        # gloo binds to the address its host name resolves to, which on a multi-homed server (or a
        # namespace host) is often not the one the other nodes reach: use the interface of Ray's node IP.
        gloo_if = address.interface_of(info["ip"]) if "GLOO_SOCKET_IFNAME" not in env else None
        if gloo_if:
            env["GLOO_SOCKET_IFNAME"] = gloo_if   # CUDA indices = NVML indices (what the monitor queries)
        # What the GPUs hold before our ranks exist: stop() waits until they are back near it.
        self.probe = open_probe(os.environ.get("SL_MONITOR_BACKEND", "auto"), info["gpus"])
        self.gpus, self.baseline = info["gpus"], release.baseline(self.probe, info["gpus"])
        started: list[SpawnedRank] = []
        for local_rank, rank in enumerate(self.ranks):
            renv = dict(env, RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(self.world_size),
                        LOCAL_WORLD_SIZE=str(len(self.ranks)), NODE_RANK=str(self.node_rank),
                        MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), SL_NODE_ID=info["node"],
                        SL_ATTEMPT=str(self.attempt), SL_JOB=self.job, **{procs.RUN_MARKER: self.run_id})
            log = self.jd.rank_log(self.attempt, rank)
            proc, owned = self.spawn([sys.executable, "-u", "-m", "methods", job_file], renv, log, REPO_ROOT)
            self.children[rank] = (proc, owned)
            self.known[owned.pid] = owned
            self.oom[rank] = oomkill.read(owned.pid)
            started.append(SpawnedRank(rank, owned.pid, owned.create_time, owned.pid, info["node"]))
        monitor.attach(self)   # memory sampler thread: gpu_mem.csv / peak_mem.csv / Ray gauges
        return Started(self.bundle, started)

    def _exited(self, rank: int) -> bool:
        if self.children[rank][0].poll() is None:
            return False
        self.exited_at.setdefault(rank, time.time())
        return True

    def wait_exit(self, timeout: float) -> bool:
        """Block (in one of the host's threads) until one more rank has exited than at the last
        return, or `timeout` passes: the executor waits on this call's reference, so an exit is seen
        at once, not at the next poll."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = sum(self._exited(rank) for rank in self.children)
            if exited > self.exits_seen:
                self.exits_seen = exited
                return True
            time.sleep(0.02)
        return False

    def poll(self) -> AgentReport:
        ranks: list[RankStatus] = []
        new: list[NewChild] = []
        for rank, (proc, owned) in self.children.items():
            counter = oomkill.read(owned.pid) if rank not in self.oom_killed else None   # before poll(): see below
            code = proc.poll()
            if code is None:
                for d in procs.descendants(owned, self.run_id):
                    if d.pid not in self.known:
                        self.known[d.pid] = d
                        new.append(NewChild(d.pid, d.create_time, rank))
                # Kept fresh while it lives (it may change cgroups; an older OOM kill of another
                # process there is not its death), but only by a reading two polls agree on: the
                # kernel counts its kill before the process can be reaped (oomkill.settled). Read
                # before poll(), so a kill in between is judged against the kept value.
                self.oom[rank] = oomkill.settled(self.oom.get(rank), counter, self.oom_read.get(rank))
                self.oom_read[rank] = counter
            elif rank not in self.oom_killed:
                self.oom_killed[rank] = oomkill.oom_killed(self.oom.get(rank), code)
            hb = heartbeat.read(self.jd.heartbeat(rank))
            beat = hb if hb and hb.attempt == self.attempt else None
            if code is not None:
                self.exited_at.setdefault(rank, time.time())
            ranks.append(RankStatus(rank, owned.pid, owned.create_time, code, beat,
                                    tail(self.jd.rank_log(self.attempt, rank)) if code is not None else [],
                                    self.oom_killed.get(rank), self.exited_at.get(rank)))
        sampler = getattr(self, "monitor", None)
        return AgentReport(node=self.bundle.node, ranks=ranks, new_children=new,
                           job_mib=dict(sampler.latest) if sampler is not None else {})

    def dump_stacks(self) -> list[int]:
        """py-spy dump of every live rank into its own log, before a hung rank is killed."""
        dumped = []
        for rank, (proc, owned) in self.children.items():
            if proc.poll() is not None or owned.process(self.run_id) is None:
                continue
            log = self.jd.rank_log(self.attempt, rank)
            header = f"\n===== launcher: py-spy dump of rank {rank} (pid {owned.pid}) before killing a hang =====\n"
            try:
                # --subprocesses: a command job's rank is a wrapper; the stack that matters is its script's
                out = subprocess.run([PY_SPY, "dump", "--pid", str(owned.pid), "--nonblocking", "--subprocesses"],
                                     capture_output=True, text=True, timeout=20)
                text = out.stdout + out.stderr
            except (subprocess.TimeoutExpired, OSError) as e:
                text = f"py-spy failed: {e}\n"
            with open(log, "a") as f:
                f.write(header + text)
            dumped.append(owned.pid)
        return dumped

    def close(self) -> None:
        """The group is over (its ranks stopped): its log stops receiving the host's output."""
        agentlog.close_agent_log(self.own_log)

    def stop(self, grace: float = 10.0) -> Stopped:
        """TERM → grace → KILL the rank groups, then sweep every descendant we ever saw."""
        leaders = [owned for _, owned in self.children.values()]
        alive = procs.terminate_tree(leaders, list(self.known.values()), self.run_id, grace)
        monitor.detach(self)   # last sample (the release), then peak_mem.csv
        codes = {rank: proc.poll() for rank, (proc, _) in self.children.items()}
        freed = None
        if getattr(self, "probe", None) is not None:
            freed = release.wait_released(self.probe, self.gpus, [(o.pid, o.create_time) for o in self.known.values()],
                                          self.baseline, timeout=float(os.environ.get("SL_RELEASE_TIMEOUT", "60")),
                                          shared=getattr(self, "shared", False))
            self.probe.close()
            self.probe = None
        return Stopped(codes, [o.pid for o in alive], freed, list(getattr(self, "gpus", [])))
