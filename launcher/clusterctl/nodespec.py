"""What one host's Ray daemons are started with, and the `ray start` line that says it (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from launcher.cluster import GPU_MIB_RESOURCE

VERSION_LABEL = "sl-version"         # the project's version on the node
RAY_VERSION_LABEL = "sl-ray-version"   # Ray's own: nodes() does not carry it
ROLE_LABEL = "sl-role"
DEFAULT_PORT = 6379
# Ray puts unix sockets at TEMP/session_<date>_<time>_<us>_<pid>/sockets/plasma_store (64 bytes
# after TEMP) and a socket path holds at most 107: a longer temp dir fails deep inside `ray start`.
SOCKET_TAIL, SOCKET_MAX = 64, 107


def temp_dir_problem(temp_dir: Path) -> str | None:
    n = len(str(temp_dir))
    if n + SOCKET_TAIL > SOCKET_MAX:
        return (f"Ray's directory {temp_dir} is {n} characters; its sockets need it at most {SOCKET_MAX - SOCKET_TAIL} "
                "(pass a shorter --state-dir, e.g. /tmp/sl-cluster)")
    return None


class Role(str, Enum):
    HEAD = "head"
    WORKER = "worker"


@dataclass(frozen=True)
class NodeSpec:
    role: Role
    node_ip: str
    temp_dir: Path                 # this host's own: hosts sharing one filesystem must not share Ray's session dirs
    gpus: int
    gpu_type: str | None
    gpu_mib: int | None
    num_cpus: int | None
    version: str
    ray_version: str
    head_address: str | None = None   # HOST:PORT, workers only
    port: int = DEFAULT_PORT          # the head's GCS port
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    dashboard: bool = True
    # The head only: Ray's monitor starts only with it, and only then does `ray up`'s local
    # provider bring up the workers (it writes ~/ray_bootstrap_config.yaml on the head).
    autoscaling_config: Path | None = None

    def labels(self) -> dict[str, str]:
        return {VERSION_LABEL: self.version, RAY_VERSION_LABEL: self.ray_version, ROLE_LABEL: self.role.value}

    def resources(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.gpu_type:
            out[f"accelerator_type:{self.gpu_type}"] = 1.0
        if self.gpu_mib:
            out[GPU_MIB_RESOURCE] = float(self.gpu_mib)
        return out


def ray_start_argv(spec: NodeSpec, ray: str = "ray") -> list[str]:
    """`ray start` for this host. --block keeps it in the foreground: the daemons are its children,
    so stopping it (and the process tree under it) stops exactly this host's Ray."""
    argv = [ray, "start", "--block", "--node-ip-address", spec.node_ip, "--temp-dir", str(spec.temp_dir),
            "--num-gpus", str(spec.gpus), "--disable-usage-stats",
            "--labels", ",".join(f"{k}={v}" for k, v in spec.labels().items())]
    if spec.num_cpus is not None:
        argv += ["--num-cpus", str(spec.num_cpus)]
    if spec.resources():
        argv += ["--resources", json.dumps(spec.resources(), sort_keys=True)]
    if spec.role is Role.HEAD:
        argv += ["--head", "--port", str(spec.port)]
        argv += (["--dashboard-host", spec.dashboard_host, "--dashboard-port", str(spec.dashboard_port)]
                 if spec.dashboard else ["--include-dashboard", "false"])
        if spec.autoscaling_config is not None:
            argv += ["--autoscaling-config", str(spec.autoscaling_config)]
    else:
        if not spec.head_address:
            raise ValueError("a worker needs the head's address")
        argv += ["--address", spec.head_address]
    return argv
