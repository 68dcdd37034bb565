"""Cluster options: local Ray by default, dashboard on localhost, GPU types read from NVML names."""

from __future__ import annotations

from launcher.cli import _launch_parser
import pytest

from launcher.cluster import ClusterOptions, gpu_type_of, local_gpus, planned_local_shape


def test_dashboard_binds_to_localhost_unless_asked() -> None:
    args = _launch_parser().parse_args(["plan.yaml"])
    assert args.dashboard_host == "127.0.0.1" and ClusterOptions().dashboard_host == "127.0.0.1"
    assert _launch_parser().parse_args(["p.yaml", "--dashboard-host", "0.0.0.0"]).dashboard_host == "0.0.0.0"


def test_gpu_type_from_nvml_device_names() -> None:
    assert gpu_type_of("NVIDIA H20") == "H20"
    assert gpu_type_of("NVIDIA A100-SXM4-80GB") == "A100"
    assert gpu_type_of("NVIDIA H100 80GB HBM3") == "H100"
    assert gpu_type_of("Tesla V100-PCIE-32GB") == "V100"
    assert gpu_type_of("Some Accelerator") is None


@pytest.mark.skipif(local_gpus()[0] > 0, reason="this machine has GPUs: nothing is simulated")
def test_no_gpu_here_simulates_two_by_default_or_what_is_asked() -> None:
    shape, declare = planned_local_shape(ClusterOptions())
    assert declare == 2 and shape.nodes[0].gpus == 2
    shape, declare = planned_local_shape(ClusterOptions(simulate_gpus=4, gpu_type="H20"))
    assert declare == 4 and (shape.nodes[0].gpus, shape.nodes[0].gpu_type) == (4, "H20")


def test_a_busy_dashboard_port_moves_to_the_next_free_one() -> None:
    import socket

    from launcher.cluster import free_dashboard_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        got = free_dashboard_port("127.0.0.1", first=busy, tries=20)
        assert got != busy and busy < got < busy + 20
