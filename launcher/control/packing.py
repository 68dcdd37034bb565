"""What the controller does differently for a packed job (one sharing its GPU by memory).

Ray reserves it a fraction of one GPU (need / the GPU's memory: Ray never puts more than a whole
GPU's worth of fractions on one GPU, nor a fraction beside a whole-GPU bundle); its ranks see only
that GPU and are told their share, which built-in methods set as torch's per-process memory
fraction; a share outgrown is an OOM (the watch), after which the job runs on whole GPUs.
"""

from __future__ import annotations

import math

from launcher.scheduling.model import Share

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
