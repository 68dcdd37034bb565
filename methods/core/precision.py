"""The dtype a rank computes in, from the plan's `training.precision`."""

from __future__ import annotations

import logging
from typing import Literal

import torch

log = logging.getLogger(__name__)

Precision = Literal["bf16", "fp16", "fp32"]
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision(requested: str) -> Precision:
    """auto: bf16 on GPUs that support it, fp32 otherwise. CPU always trains in fp32: CPU runs are
    tests and demos, and DeepSpeed's CPU path is only exercised here in fp32."""
    if not torch.cuda.is_available():
        if requested not in ("auto", "fp32"):
            log.warning("precision %s requested but no CUDA device: training in fp32", requested)
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return requested  # type: ignore[return-value]
