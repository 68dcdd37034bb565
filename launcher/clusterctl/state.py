"""Per-host record of what `bin/cluster up|join` started, so `down` stops exactly that.

Kept in the host's own directory (named by its address: hosts that share a filesystem, as NFS
or test namespaces do, must not share it). The daemons carry a marker in their environment; a
process is stopped only when its PID, start time and marker all match.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher.atomic import write_json
from launcher.clusterctl.nodespec import Role

MARKER_ENV = "SL_CLUSTER_NODE"
STATE_FILE = "node.json"


def host_dir(base: Path, node_ip: str) -> Path:
    return base / node_ip


@dataclass(frozen=True)
class NodeRecord:
    role: Role
    node_ip: str
    address: str          # the head's HOST:PORT, what workers and drivers join
    marker: str           # MARKER_ENV's value in every daemon this host started
    pid: int              # `ray start --block`, the daemons' parent
    start_time: float     # procs.start_time of that process: a recycled PID never matches
    token_path: str
    temp_dir: str
    log: str

    def save(self, directory: Path) -> Path:
        path = directory / STATE_FILE
        write_json(path, {**asdict(self), "role": self.role.value})
        return path

    @classmethod
    def load(cls, directory: Path) -> "NodeRecord | None":
        try:
            raw = json.loads((directory / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        return cls(**{**raw, "role": Role(raw["role"])})


def clear(directory: Path) -> None:
    """Forget this host's record (its daemons are stopped)."""
    (directory / STATE_FILE).unlink(missing_ok=True)
