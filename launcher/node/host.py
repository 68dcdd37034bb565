"""NodeHost: the run's one actor per node, started once, holding every rank group placed there.

Ray still does the resource accounting: each job's GPUs are reserved by its placement group, and a
zero-CPU task inside the bundle (`bundle_info`, milliseconds on Ray's pre-started workers) reports
which GPU ids Ray gave it. The host then spawns the ranks on exactly those GPUs. What goes is a
new actor process per job (a Python start and `import ray` each time). Another run or user of a
shared cluster can never get those GPUs: they stay reserved by the placement group until the
executor removes it, after the ranks are gone; the host itself holds no GPU and no CPU.

The host is threaded: a slow call for one job (py-spy of a hung rank, a TERM grace, the GPU
release wait) never holds up another job's poll. Calls for one group are serialised by its lock,
and a group stopped before its start ran never spawns.
"""

from __future__ import annotations

import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ray

from launcher import procs
from launcher.node.group import RankGroup, free_port
from launcher.node.messages import BundleInfo, Started, Stopped

CONCURRENCY = 64   # calls at once: every job on a node polls and waits for an exit; a few release slowly


@dataclass
class _Slot:
    group: RankGroup | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False


class NodeHost:
    CALLS = ("poll", "dump_stacks", "stop")
    UNLOCKED = ("wait_exit",)   # may block for long: never under the group's lock

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.slots: dict[str, _Slot] = {}
        self.guard = threading.Lock()
        # Ranks are forked from this one thread, alive as long as the host: their parent-death signal
        # (procs.spawn) fires when the forking *thread* ends, and the actor's call threads are Ray's.
        self.spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")

    def _spawn(self, *args: Any, **kwargs: Any) -> tuple[Any, procs.Owned]:
        return self.spawner.submit(procs.spawn, *args, **kwargs).result()

    def ping(self) -> dict[str, Any]:
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "groups": sorted(self.slots)}

    def free_port(self) -> int:
        return free_port()

    def start(self, key: str, job: str, attempt: int, node_rank: int, ranks: list[int], world_size: int,
              job_dir: str, bundle: BundleInfo, job_file: str, master_addr: str | None, master_port: int | None,
              env: dict[str, str]) -> Started:
        """Open the group and spawn its ranks, in one call (a threaded actor runs calls in any order)."""
        with self.guard:
            slot = self.slots.get(key)
            if slot is None:
                slot = self.slots[key] = _Slot()
        with slot.lock:
            if slot.stopped:
                raise RuntimeError(f"{key} was stopped before its ranks were started")
            slot.group = RankGroup(self.run_id, job, attempt, node_rank, ranks, world_size, job_dir, bundle,
                                   self._spawn)
            return slot.group.start(job_file, master_addr, master_port, env)

    def call(self, key: str, method: str, *args: Any) -> Any:
        if method not in self.CALLS + self.UNLOCKED:
            raise ValueError(f"no such group call: {method}")
        with self.guard:
            slot = self.slots.get(key)
            if slot is None and method == "stop":   # stopped before its start arrived: it never spawns
                slot = self.slots[key] = _Slot(stopped=True)
        if slot is None:
            raise KeyError(f"no rank group {key} on this host (it was closed, or this host restarted)")
        if method in self.UNLOCKED:
            return False if slot.group is None else getattr(slot.group, method)(*args)
        with slot.lock:
            if method == "stop":
                slot.stopped = True
                if slot.group is None:
                    return Stopped({}, [], None, [])
            if slot.group is None:
                raise KeyError(f"rank group {key} has not started")
            return getattr(slot.group, method)(*args)

    def close(self, key: str) -> None:
        """Forget a group whose ranks are stopped (its log file is closed)."""
        with self.guard:
            slot = self.slots.pop(key, None)
        if slot is not None:
            with slot.lock:
                if slot.group is not None:
                    slot.group.close()


RemoteHost = ray.remote(NodeHost)


@ray.remote(num_cpus=0)
def bundle_info() -> BundleInfo:
    """Run inside a placement-group bundle with its GPUs: where it is and which GPU ids Ray reserved."""
    ctx = ray.get_runtime_context()
    gpus = tuple(str(g) for g in ctx.get_accelerator_ids().get("GPU", []))
    return BundleInfo(ctx.get_node_id(), ray.util.get_node_ip_address(), socket.gethostname(), gpus)


@ray.remote(num_cpus=0)
def sweep_node(run_id: str, records: list[tuple[int, float, bool]]) -> list[int]:
    """Kill what a lost host left on its node: each recorded (pid, create_time, is_rank_leader) is
    verified (create time and run marker) before it is signalled."""
    owned = [procs.Owned(pid, ct) for pid, ct, _ in records]
    alive = [o for o in owned if o.process(run_id) is not None]
    leaders = [procs.Owned(pid, ct) for pid, ct, lead in records if lead]
    procs.terminate_tree(leaders, alive, run_id, grace=2.0)
    return [o.pid for o in alive]


@dataclass(frozen=True)
class GroupHandle:
    """One job's rank group on one node's host, as the executor and the release thread call it."""
    host: Any          # ActorHandle of the NodeHost
    key: str

    def call(self, method: str, *args: Any) -> Any:
        return self.host.call.remote(self.key, method, *args)

    def close(self) -> Any:
        return self.host.close.remote(self.key)
