"""Starting or joining Ray, and reading the cluster's shape (GPUs per node, GPU types)."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.resources import ClusterShape, NodeShape

GPU_TYPE_RE = re.compile(r"\b(H200|H100|H20|A100|A800|H800|L40S|L40|L4|A10G|A10|V100|T4|RTX\s?\d{4})\b", re.I)


def gpu_type_of(name: str) -> str | None:
    m = GPU_TYPE_RE.search(name)
    return m.group(1).upper().replace(" ", "") if m else None


def local_gpus() -> tuple[int, str | None]:
    """(count, type) of this machine's NVIDIA GPUs; (0, None) where NVML is absent (CPU machines, CI)."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound and friends: no GPUs here
        return 0, None
    try:
        n = pynvml.nvmlDeviceGetCount()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0)) if n else ""
        return n, gpu_type_of(name if isinstance(name, str) else name.decode())
    finally:
        pynvml.nvmlShutdown()


def local_gpu_mib() -> int | None:
    """Memory of this machine's first NVIDIA GPU in MiB (what packed jobs share), None without NVML."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # no library, no driver: no GPUs to pack onto
        return None
    try:
        if not pynvml.nvmlDeviceGetCount():
            return None
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).total) >> 20
    finally:
        pynvml.nvmlShutdown()


GPU_MIB_RESOURCE = "sl_gpu_mib"   # a node's per-GPU memory, as a Ray resource nobody requests: a label with a number


@dataclass(frozen=True)
class ClusterOptions:
    address: str | None = None            # None: start a local Ray owned by the driver
    simulate_gpus: int | None = None      # logical GPUs for a machine without any
    gpu_type: str | None = None           # type declared for the local node (simulation)
    simulate_gpu_memory: int | None = None   # MiB per simulated GPU (packing); None: unknown, no packing
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int | None = None     # None: 8265, or the next free port (another run on this machine has it)
    namespace: str = "safety-launcher"


def planned_local_shape(opts: ClusterOptions) -> tuple[ClusterShape, int | None]:
    """The local node as it will be started, and the num_gpus to declare (None: let Ray detect)."""
    count, kind = local_gpus()
    if count and not opts.simulate_gpus:
        return ClusterShape((NodeShape("local", count, kind, local_gpu_mib()),)), None
    n = opts.simulate_gpus or 2
    return ClusterShape((NodeShape("local", n, opts.gpu_type, opts.simulate_gpu_memory),)), n


DASHBOARD_PORT = 8265


def free_dashboard_port(host: str, first: int = DASHBOARD_PORT, tries: int = 50) -> int:
    """Ray's default port, or the next one free on `host`: a second run on the same server must not
    fail because the first one's dashboard is up (Ray refuses an occupied port)."""
    for port in range(first, first + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free dashboard port in {first}-{first + tries - 1} on {host}: pass --dashboard-port or "
                       "--no-dashboard")


def _token_first() -> None:
    """A new local Ray turns token auth on and writes ~/.ray/auth_token with the umask (0644):
    write it ourselves first, 0600, so other users of the server cannot read it."""
    from launcher.clusterctl import auth

    if os.environ.get(auth.MODE_ENV, "token").lower() != "token" or os.environ.get(auth.TOKEN_ENV):
        return
    auth.ensure_token(Path(os.environ.get(auth.PATH_ENV) or auth.default_token_path()))


def _present_token() -> None:
    """Joining a cluster: Ray sends the token only with RAY_AUTH_MODE=token, which it reads when it is
    imported; a token on this host (Ray's default file or RAY_AUTH_TOKEN_PATH) turns it on."""
    from launcher.clusterctl import auth

    if os.environ.get(auth.MODE_ENV) is not None:
        return
    path = Path(os.environ.get(auth.PATH_ENV) or auth.default_token_path())
    if os.environ.get(auth.TOKEN_ENV) or path.is_file():
        os.environ[auth.MODE_ENV] = "token"


def start(opts: ClusterOptions, declare_gpus: int | None) -> Any:
    if opts.address:
        _present_token()   # before ray is imported
    import ray

    if opts.address:
        return ray.init(address=opts.address, namespace=opts.namespace, log_to_driver=False)
    resources = {f"accelerator_type:{opts.gpu_type}": 1.0} if opts.gpu_type else {}
    gpu_mib = opts.simulate_gpu_memory if declare_gpus else local_gpu_mib()
    if gpu_mib:
        resources[GPU_MIB_RESOURCE] = float(gpu_mib)
    # Simulated GPUs are logical: give Ray enough logical CPUs that CPU never limits placement,
    # packed jobs included (each reserves its cpus_per_rank, several to a GPU).
    num_cpus = max(os.cpu_count() or 1, 32 * (declare_gpus or 0)) if declare_gpus else None
    port = opts.dashboard_port
    if opts.dashboard and port is None:
        port = free_dashboard_port(opts.dashboard_host)
    _token_first()
    # address="local": always a fresh Ray owned by this driver, never whatever cluster happens to run here.
    return ray.init(address="local", num_gpus=declare_gpus, num_cpus=num_cpus, resources=resources or None, namespace=opts.namespace,
                    include_dashboard=opts.dashboard, dashboard_host=opts.dashboard_host,
                    dashboard_port=port or DASHBOARD_PORT, log_to_driver=False)


def shape_from_ray() -> ClusterShape:
    import ray

    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        kinds = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
        nodes.append(NodeShape(n["NodeID"], int(res.get("GPU", 0)), kinds[0] if kinds else None,
                               int(res.get(GPU_MIB_RESOURCE, 0)) or None))
    return ClusterShape(tuple(nodes))
