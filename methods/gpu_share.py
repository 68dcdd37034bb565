"""A packed job's rank keeps to its share of the GPU: torch's per-process memory fraction, so a
tensor past the share is this rank's CUDA OOM (classified as such), not a neighbour's."""

from __future__ import annotations

import os


def limit_to_share() -> float | None:
    """Apply SL_GPU_MEMORY_FRACTION (set by the launcher for packed jobs) to this rank's GPU; the
    fraction applied, or None (not packed, or no CUDA here). torch is imported only where a GPU
    can be: a synthetic rank on a CPU machine stays torch-free."""
    frac = os.environ.get("SL_GPU_MEMORY_FRACTION")
    if not frac or not os.path.exists("/dev/nvidiactl"):
        return None
    import torch
    if not torch.cuda.is_available():
        return None
    device = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    torch.cuda.set_per_process_memory_fraction(float(frac), device)
    return float(frac)
