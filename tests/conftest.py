"""Shared test set-up: GPU-marked tests skip where no CUDA device exists (this machine, CI), and the
host-building tests share one pytest-xdist worker."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# The namespace-host and Slurm tests build hosts at fixed 198.18.0.0/15 addresses and one Slurm bed,
# so under `pytest -n N --dist loadgroup` they must run one at a time on one worker.
_HOSTS_GROUP = "hosts"


def _group(nodeid: str) -> str | None:
    return _HOSTS_GROUP if "integration/cluster/" in nodeid else None


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


# tryfirst: xdist's own collection hook turns xdist_group markers into the `@group` nodeid suffix; this
# conftest registers before it, so without tryfirst xdist reads the items before the marker is added.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = _group(item.nodeid)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    # pytest 9.2 with pytest-xdist 3.8 drops every xdist_group (pytest-xdist#1386): two host beds would
    # then run at once and fail on their shared addresses. Stop before any test runs instead.
    if node.config.getvalue("dist") != "loadgroup":
        return
    lost = [i for i in ids if _group(i) and "@" not in i]
    if lost:
        pytest.exit(
            f"tests/conftest.py: {len(lost)} host-building tests (e.g. {lost[0]}) lost their xdist_group "
            "'hosts', so they would run on several workers at once and collide on 198.18.0.0/15. This is "
            "pytest-xdist#1386 (pytest >= 9.2 with pytest-xdist 3.8). Fix: pip install 'pytest<9.2', or "
            "run these tests without -n.",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
