"""The `ray start` line of a host: the head passes Ray's autoscaler config on (ray up's local
provider starts the workers only through it), a worker never does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from launcher.clusterctl.nodespec import NodeSpec, Role, ray_start_argv

HEAD = NodeSpec(Role.HEAD, "10.0.0.1", Path("/tmp/sl-cluster/10.0.0.1/ray"), 8, "H20", None, 32, "0.1.0", "2.60.0")


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_head_passes_the_autoscaling_config() -> None:
    spec = replace(HEAD, autoscaling_config=Path("/home/u/ray_bootstrap_config.yaml"))
    argv = ray_start_argv(spec, "/venv/bin/ray")
    assert argv[:3] == ["/venv/bin/ray", "start", "--block"]
    assert "--head" in argv
    assert _after(argv, "--autoscaling-config") == "/home/u/ray_bootstrap_config.yaml"


def test_no_autoscaling_config_unless_asked() -> None:
    assert "--autoscaling-config" not in ray_start_argv(HEAD)


def test_a_worker_never_gets_one() -> None:
    worker = replace(HEAD, role=Role.WORKER, head_address="10.0.0.1:6379",
                     autoscaling_config=Path("/home/u/ray_bootstrap_config.yaml"))
    argv = ray_start_argv(worker)
    assert "--autoscaling-config" not in argv and "--head" not in argv
    assert _after(argv, "--address") == "10.0.0.1:6379"


def test_head_declares_what_it_was_given() -> None:
    argv = ray_start_argv(HEAD)
    assert (_after(argv, "--node-ip-address"), _after(argv, "--num-gpus"), _after(argv, "--num-cpus")) == \
        ("10.0.0.1", "8", "32")
    assert _after(argv, "--port") == "6379"


def test_a_worker_needs_the_head() -> None:
    with pytest.raises(ValueError):
        ray_start_argv(replace(HEAD, role=Role.WORKER))
