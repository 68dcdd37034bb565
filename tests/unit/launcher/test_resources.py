"""ClusterShape.why_not: whether a job's request can ever fit, and the reason when not."""

from __future__ import annotations

import pytest

from launcher.resources import ClusterShape, NodeShape
from launcher.spec import Resources

MIXED = ClusterShape((NodeShape("n1", 8, "H20"), NodeShape("n2", 8, "H20"), NodeShape("n3", 4, "A100")))


def test_fits():
    assert ClusterShape.single(2).why_not(Resources(gpus_per_node=2)) is None
    assert MIXED.why_not(Resources(nodes=2, gpus_per_node=8, gpu_type="H20")) is None
    assert MIXED.why_not(Resources(nodes=3, gpus_per_node=4)) is None
    assert MIXED.why_not(Resources(gpus_per_node=4, gpu_type="a100")) is None   # type match ignores case


@pytest.mark.parametrize("cluster,res,message", [
    (ClusterShape.single(2), Resources(gpus_per_node=4),
     "gpus_per_node 4 is more GPUs than any node has (largest: 2; cluster: 1 node (2 GPUs))"),
    (ClusterShape.single(1), Resources(gpus_per_node=2),
     "gpus_per_node 2 is more GPUs than any node has (largest: 1; cluster: 1 node (1 GPU))"),
    (MIXED, Resources(gpus_per_node=8, gpu_type="A100"),
     "gpus_per_node 8 is more GPUs than any node has (largest: 4; cluster: 3 nodes (8 GPUs H20, 8 GPUs H20, 4 GPUs A100))"),
    (MIXED, Resources(gpu_type="H100"), "no node has gpu_type H100 (the cluster has A100, H20)"),
    (ClusterShape.single(2), Resources(gpu_type="H20"), "no node has gpu_type H20 (the cluster has untyped)"),
    (MIXED, Resources(nodes=3, gpus_per_node=8),
     "nodes 3 x gpus_per_node 8 needs 3 nodes with that many GPUs; only 2 have them "
     "(cluster: 3 nodes (8 GPUs H20, 8 GPUs H20, 4 GPUs A100))"),
    (ClusterShape.single(0), Resources(),
     "gpus_per_node 1 is more GPUs than any node has (largest: 0; cluster: 1 node (0 GPUs))"),
])
def test_why_not(cluster, res, message):
    assert cluster.why_not(res) == message


def test_world_size():
    assert Resources(nodes=2, gpus_per_node=4).world_size == 8
