"""`sl cluster` arguments: --autoscaling-config (up), --foreground (up and join), the wait action."""

from __future__ import annotations

import pytest

from launcher.cliargs import CLUSTER_ACTIONS, cluster_parser


def test_up_takes_an_autoscaling_config_and_foreground() -> None:
    args = cluster_parser().parse_args(["up", "--autoscaling-config=~/ray_bootstrap_config.yaml", "--foreground"])
    assert args.autoscaling_config == "~/ray_bootstrap_config.yaml" and args.foreground


def test_defaults_detach_without_autoscaler() -> None:
    up = cluster_parser().parse_args(["up"])
    join = cluster_parser().parse_args(["join", "10.0.0.1:6379"])
    assert (up.autoscaling_config, up.foreground, join.foreground) == (None, False, False)


def test_join_has_no_autoscaling_config() -> None:
    with pytest.raises(SystemExit):
        cluster_parser().parse_args(["join", "10.0.0.1:6379", "--autoscaling-config", "x.yaml"])


def test_wait_needs_a_node_count() -> None:
    assert "wait" in CLUSTER_ACTIONS
    args = cluster_parser().parse_args(["wait", "10.0.0.1:6379", "--nodes", "3", "--timeout", "30"])
    assert (args.address, args.nodes, args.timeout, args.token) == ("10.0.0.1:6379", 3, 30.0, None)
    with pytest.raises(SystemExit):
        cluster_parser().parse_args(["wait", "10.0.0.1:6379"])
