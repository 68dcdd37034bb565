"""DeepSpeed's JIT-built ops, made ready before a rank's process group exists.

torch builds JIT extensions under a "baton": a `lock` file created with O_EXCL in the op's build
directory and removed when the build ends. A build killed half-way (a supervisor kill during a
rank's first start, a Ctrl-C) leaves that file behind, and every later process that loads the op
waits for it to vanish: forever, in the `loading` phase. So, before DeepSpeed starts, a rank
  1. takes our own lock on the extensions root (flock: the kernel drops it when the holder dies),
  2. removes batons that no live process holds open (checked twice, a second apart, so that a
     holder between its close() and its remove() is not mistaken for a dead one),
  3. loads the ops the job will need (building them the first time), which DeepSpeed then finds
     already loaded in this process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

BATON = "lock"   # torch.utils.file_baton's file name inside each op's build directory
ROOT_LOCK = ".safety-launcher-ops.lock"


def extensions_root() -> Path:
    """Where torch builds JIT extensions: TORCH_EXTENSIONS_DIR, or its default per Python and accelerator."""
    from torch.utils.cpp_extension import _get_build_directory

    # The build directory of any op name is <root>/<name>; asking for one creates it, so use a fixed one.
    return Path(_get_build_directory("deepspeed_shm_comm", verbose=False)).parent


def holders(path: Path) -> list[int]:
    """PIDs with `path` open (torch's baton keeps its fd open for the whole build)."""
    try:
        target = os.stat(path)
    except FileNotFoundError:
        return []
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue   # gone, or not ours to read
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                found.append(int(pid))
                break
    return found


def stale_batons(root: Path, recheck_after: float = 1.0) -> list[Path]:
    """Batons nobody holds, seen so twice `recheck_after` seconds apart with the same inode."""
    first = {}
    for baton in root.glob(f"*/{BATON}"):
        try:
            ino = baton.stat().st_ino
        except FileNotFoundError:
            continue
        if not holders(baton):
            first[baton] = ino
    if not first:
        return []
    time.sleep(recheck_after)
    stale = []
    for baton, ino in first.items():
        try:
            same = baton.stat().st_ino == ino
        except FileNotFoundError:
            continue   # its holder released it normally
        if same and not holders(baton):
            stale.append(baton)
    return stale


def needed_builders(deepspeed_config: dict | None) -> list:
    """The op builders this job's DeepSpeed will JIT-load: the shared-memory collective op on the
    CPU accelerator, CPU Adam when the optimizer is offloaded to the CPU."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.ops import __compatible_ops__

    accel = get_accelerator()
    names = []
    if accel.device_name() == "cpu":
        names.append("ShareMemCommBuilder")
    zero = (deepspeed_config or {}).get("zero_optimization", {})
    if (zero.get("offload_optimizer") or {}).get("device") == "cpu":
        names.append("CPUAdamBuilder")
    builders = []
    for name in names:
        builder = accel.create_op_builder(name)
        if builder is not None and __compatible_ops__.get(builder.NAME, False):
            builders.append(builder)
    return builders


def prepare(deepspeed_config: dict | None) -> list[str]:
    """Clear stale batons and load this job's ops under the node-wide lock. Returns the ops loaded."""
    builders = needed_builders(deepspeed_config)
    root = extensions_root()
    root.mkdir(parents=True, exist_ok=True)
    loaded = []
    with open(root / ROOT_LOCK, "w") as lock:
        waited = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)
        waited = time.monotonic() - waited
        if waited >= 1.0:
            # Another process of this node held the lock (building an op the first time): said here,
            # so the rank log shows where the time went ("ready in 0.0 s" below would hide it).
            log.info("waited %.1f s for the node's op lock %s", waited, root / ROOT_LOCK)
        for baton in stale_batons(root):
            log.warning("torch extensions: removing %s, left by a build that was killed (no process holds it)", baton)
            baton.unlink(missing_ok=True)
        for builder in builders:
            start = time.monotonic()
            builder.load(verbose=False)
            log.info("DeepSpeed op %s ready in %.1f s", builder.NAME, time.monotonic() - start)
            loaded.append(builder.NAME)
    return loaded
