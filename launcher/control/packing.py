"""What the controller does differently for a packed job (one sharing its GPU by memory).

Ray reserves it a fraction of one GPU (need / the GPU's memory: Ray never puts more than a whole
GPU's worth of fractions on one GPU, nor a fraction beside a whole-GPU bundle); its ranks see only
that GPU and are told their share, which built-in methods set as torch's per-process memory
fraction; a share outgrown is an OOM (the watch), after which the job runs on whole GPUs.
"""

from __future__ import annotations

import math
from typing import Any

from launcher.control.core import Core
from launcher.scheduling.model import Placement, Share

FRACTION_STEP = 1e-4   # Ray's resource precision


def gpu_fraction(mib: int, usable_mib: int) -> float:
    """The share of one GPU Ray reserves for a need of `mib`: of its usable memory (capacity less
    the headroom, scheduling.books), so Ray's rule (fractions on one GPU sum to at most 1) is the
    books' rule (needs sum to at most the usable memory), and Ray puts jobs where the books do."""
    return min(1.0, math.ceil(mib / usable_mib / FRACTION_STEP) * FRACTION_STEP)


def rank_env(mib: int, gpu_mib: int) -> dict[str, str]:
    """What a packed job's ranks are told: their share in MiB and as a fraction of the whole GPU
    (torch's per-process limit is that fraction of the device's memory)."""
    frac = math.floor(mib / gpu_mib / FRACTION_STEP) * FRACTION_STEP
    return {"SL_GPU_SHARE_MIB": str(mib), "SL_GPU_MEMORY_FRACTION": f"{frac:.4f}",
            # freed blocks go back to the driver instead of staying cached: the neighbours need them
            "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def actual_share(planned: Share, gpus: list[str]) -> Share:
    """The share where Ray really put it: the books' GPU id was a guess."""
    return Share(planned.node, gpus[0] if gpus else planned.gpu, planned.mib)


def reserve_fraction(core: Core, p: Placement) -> float:
    """The GPU fraction a placement's reservation asks Ray for: 0 (whole GPUs) unless packed."""
    if p.gpu is None:
        return 0.0
    return gpu_fraction(core.jobs[p.name].shape.mib, core.books.usable_mib(p.nodes[0]))


def share_of(core: Core, name: str) -> Share | None:
    h = core.holdings.get(name)
    return h.share if h is not None else None


def attempt_env(core: Core, name: str) -> dict[str, str]:
    share = share_of(core, name)
    return rank_env(share.mib, core.books.gpu_mib[share.node]) if share is not None else {}


def hold_where_placed(core: Core, name: str, placement: list[dict[str, Any]], ends_at: float) -> None:
    """The books follow where Ray really put the attempt; a packed one's share goes on record in
    its placement (bin/report shows who shared which GPU)."""
    share = share_of(core, name)
    if share is None:
        core.hold_gpus(name, tuple((h["node"], len(h["gpus"])) for h in placement), ends_at)
        return
    placement[0]["share_mib"] = share.mib
    core.hold_share(name, actual_share(share, placement[0]["gpus"]), ends_at)
