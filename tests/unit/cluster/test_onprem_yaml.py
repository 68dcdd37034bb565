"""cluster/ray-onprem.yaml against Ray's own config preparation and schema (offline: nothing is
contacted), and what its commands must do: the head passes Ray's autoscaler config on, every node
starts with bin/cluster (never `ray stop`, which kills every Ray on the machine), and the token
reaches the workers."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from launcher.cliargs import cluster_parser
from tests.helpers import REPO

pytest.importorskip("jsonschema")   # Ray's validate_config needs it (the test extra installs it)

YAML = REPO / "cluster" / "ray-onprem.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load(YAML.read_text()))
    validate_config(cfg)   # raises jsonschema.ValidationError on a field Ray 2.60 does not know
    return cfg


def _cluster_args(command: str) -> list[str]:
    """The arguments after `bin/cluster` in a `cd DIR && bin/cluster ...` command."""
    words = shlex.split(command)
    assert "bin/cluster" in words, command
    return words[words.index("bin/cluster") + 1:]


def _all_commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in cfg.get(k, [])]


def test_ray_accepts_it_as_a_two_worker_local_cluster(config: dict) -> None:
    assert config["provider"]["type"] == "local"
    (node_type,) = config["available_node_types"].values()
    assert (node_type["min_workers"], node_type["max_workers"]) == (2, 2) == (len(config["provider"]["worker_ips"]),) * 2


def test_head_starts_with_bin_cluster_and_the_autoscaling_config(config: dict) -> None:
    *before, start = config["head_start_ray_commands"]
    args = cluster_parser().parse_args(_cluster_args(start))
    assert args.action == "up"
    assert args.autoscaling_config == "~/ray_bootstrap_config.yaml"   # where `ray up` puts it on the head
    assert [_cluster_args(c) for c in before] == [["down"]]


def test_workers_join_the_head_with_bin_cluster(config: dict) -> None:
    *before, start = config["worker_start_ray_commands"]
    args = cluster_parser().parse_args(_cluster_args(start))
    head = cluster_parser().parse_args(_cluster_args(config["head_start_ray_commands"][-1]))
    assert args.action == "join" and args.address == f"$RAY_HEAD_IP:{head.port}"
    assert [_cluster_args(c) for c in before] == [["down"]]


def test_no_command_runs_ray_stop_or_ray_start(config: dict) -> None:
    for command in _all_commands(config):
        assert not re.search(r"\bray\s+(stop|start)\b", command), command


def test_the_token_reaches_every_node_before_ray_starts(config: dict) -> None:
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    for start in (config["head_start_ray_commands"][-1], config["worker_start_ray_commands"][-1]):
        assert cluster_parser().parse_args(_cluster_args(start)).token is None   # the default: ~/.ray/auth_token


def test_the_dashboard_stays_on_localhost(config: dict) -> None:
    args = cluster_parser().parse_args(_cluster_args(config["head_start_ray_commands"][-1]))
    assert args.dashboard_host == "127.0.0.1" and not args.no_dashboard
