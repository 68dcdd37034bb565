"""The monitor's gauges inside a real Ray actor reach the node's Prometheus metrics endpoint."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_gauges_from_an_actor_are_scrapeable(tmp_path: Path) -> None:
    import ray

    # address="local": a fresh instance even where another test left a `ray start` cluster running.
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[3])}})
    try:
        @ray.remote(num_gpus=1)
        class Agent:   # samples its own process, as a NodeAgent samples its ranks
            def run(self, job_dir: str, seconds: float) -> float | None:
                from launcher import monitor
                node = ray.get_runtime_context().get_node_id()
                s = monitor.Sampler(job_dir, node, ["0"], lambda: [os.getpid()], interval=0.2, backend="host",
                                    run="run-x", job="job-x").start()
                time.sleep(seconds)
                return s.stop()[0].peak_mib

        ref = Agent.remote().run.remote(str(tmp_path / "job"), 15.0)
        port = ray.nodes()[0]["MetricsExportPort"]
        found: dict[str, float] = {}
        deadline = time.time() + 14
        while time.time() < deadline and len(found) < 2:
            time.sleep(1)
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                continue
            for line in body.splitlines():
                if line.startswith("ray_sl_job_gpu_memory") and 'job_name="job-x"' in line and 'run="run-x"' in line \
                        and 'gpu="0"' in line:
                    found[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
        peak = ray.get(ref, timeout=60)
    finally:
        ray.shutdown()
    assert set(found) == {"ray_sl_job_gpu_memory_mib", "ray_sl_job_gpu_memory_peak_mib"}, found
    assert 10 < found["ray_sl_job_gpu_memory_mib"] <= found["ray_sl_job_gpu_memory_peak_mib"] <= (peak or 0) + 1e-6
