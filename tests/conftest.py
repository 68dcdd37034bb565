"""Shared test set-up: GPU-marked tests skip where no CUDA device exists (this machine, CI)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist (`--dist loadgroup`) the namespace-host and Slurm tests share one worker: they
    # build hosts at fixed 198.18.0.0/15 addresses and one Slurm bed, so two at once would collide.
    for item in items:
        if "integration/cluster/" in item.nodeid:
            item.add_marker(pytest.mark.xdist_group("hosts"))
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
