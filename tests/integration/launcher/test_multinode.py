"""A simulated 2-node cluster (ray.cluster_utils.Cluster, 2 logical GPUs each; one node H20, one
A100) joined with --address: placement across nodes, GPU types, a 2-node DeepSpeed world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import DATA, REPO
from tests.integration.launcher.conftest import launch, status, write_plan

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 2, "include_dashboard": False,
                                                      "resources": {"accelerator_type:H20": 1}})
    worker = c.add_node(num_cpus=4, num_gpus=2, resources={"accelerator_type:A100": 1})
    c.wait_for_nodes()
    c.a100_node_id = worker.node_id
    yield c
    c.shutdown()


def _seen(run_dir: Path, job: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "jobs" / job / "seen").glob("rank-*.json"))]


def test_pipeline_across_nodes_never_shares_a_device(cluster, runs: Path) -> None:
    out = launch(REPO / "plans" / "pipeline_synthetic.yaml", runs, "--address", cluster.address,
                 "--set", "defaults.params.steps=40", "--set", "defaults.params.step_time=0.1")
    assert out.returncode == 0, out.stdout + out.stderr
    st = status(runs)
    jobs = {j["name"]: j for j in st["jobs"]}
    spans = {n: (j["attempts"][0]["started"], j["attempts"][0]["ended"]) for n, j in jobs.items()}
    devices = {n: {(s["node_id"], s["cuda_visible_devices"]) for s in _seen(Path(st["dir"]), n)} for n in jobs}
    overlaps = [(a, b) for a in jobs for b in jobs if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]
    assert ("lisa", "sft_baseline") in overlaps, "the Lisa and SFT branches should run concurrently"
    for a, b in overlaps:
        assert devices[a].isdisjoint(devices[b]), (a, b, devices[a], devices[b])
    for j in jobs.values():
        for up in j["needs"]:
            assert j["attempts"][0]["started"] >= jobs[up]["attempts"][-1]["ended"]


def test_gpu_type_and_two_node_deepspeed(cluster, runs: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, f"""
name: nodes
jobs:
  on_a100:
    method: synthetic
    params: {{steps: 5}}
    resources: {{gpus_per_node: 1, gpu_type: A100}}
  two_nodes:
    method: sft
    model: {{tiny: llama}}
    data: {{train: {DATA / 'sst2_mini.jsonl'}}}
    deepspeed: zero2
    resources: {{nodes: 2, gpus_per_node: 2}}
    needs: [on_a100]
    training: {{max_steps: 6, batch_size: 2, max_length: 96}}
    checkpoint: {{every: 3, keep: 2}}
""")
    out = launch(plan, runs, "--address", cluster.address)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    st = status(runs)
    run_dir = Path(st["dir"])
    (a100,) = _seen(run_dir, "on_a100")
    assert a100["node_id"] == cluster.a100_node_id
    ranks = _seen(run_dir, "two_nodes")
    assert sorted(r["rank"] for r in ranks) == [0, 1, 2, 3] and {r["world_size"] for r in ranks} == {4}
    assert len({r["node_id"] for r in ranks}) == 2
    assert len({(r["node_id"], r["local_rank"]) for r in ranks}) == 4
    result = json.loads((run_dir / "jobs" / "two_nodes" / "result.json").read_text())
    assert result["status"] == "succeeded" and result["dist"] == {"backend": "gloo", "world_size": 4}


@pytest.mark.parametrize("resources, expect", [
    ("{gpus_per_node: 3}", "more GPUs than any node has"),
    ("{gpus_per_node: 1, gpu_type: V100}", "no node has gpu_type V100"),
    ("{nodes: 3, gpus_per_node: 2}", "needs 3 nodes"),
])
def test_impossible_job_is_refused_before_anything_starts(cluster, runs: Path, tmp_path: Path, resources: str,
                                                          expect: str) -> None:
    plan = write_plan(tmp_path, f"jobs:\n  big:\n    method: synthetic\n    resources: {resources}\n")
    # --address waits for nodes that could still join (300 s by default): bounded short here, it
    # must still end in the refusal, with nothing started
    out = launch(plan, runs, "--address", cluster.address, "--wait-for-nodes", "2")
    assert out.returncode == 2 and expect in out.stderr and "Traceback" not in out.stderr
    assert not runs.exists() or not any(runs.iterdir())
