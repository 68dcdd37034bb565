"""The launcher's gauges reach the node's Prometheus metrics endpoint with one tag set: the memory
gauges from inside a real Ray actor, the progress gauges from the driver, every name the Grafana
dashboard queries."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from pathlib import Path

import pytest

from launcher import raymetrics

pytestmark = pytest.mark.integration
SAMPLE_RE = re.compile(r'^(ray_sl_job_[a-z_]+)\{(.*)\} (\S+)$')


def labels(text: str) -> dict[str, str]:
    return dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', text))


def test_gauges_from_an_actor_and_the_driver_are_scrapeable_with_one_tag_set(tmp_path: Path) -> None:
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
                                    run="run-x", job="job-x", attempt=2).start()
                time.sleep(seconds)
                return s.stop()[0].peak_mib

        ref = Agent.remote().run.remote(str(tmp_path / "job"), 20.0)
        progress = raymetrics.ProgressMetrics("run-x")   # the driver's, as launcher.driver sets them
        port = ray.nodes()[0]["MetricsExportPort"]
        found: dict[str, tuple[dict[str, str], float]] = {}
        deadline = time.time() + 19
        while time.time() < deadline and len(found) < len(raymetrics.GAUGES):
            progress.update("job-x", 7, 10, 1.5, attempt=2)
            time.sleep(1)
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                continue
            for line in body.splitlines():
                m = SAMPLE_RE.match(line)
                if m and labels(m[2]).get("run_id") == "run-x":
                    found[m[1]] = (labels(m[2]), float(m[3]))
        peak = ray.get(ref, timeout=60)
    finally:
        ray.shutdown()
    assert set(found) == {g.prometheus_name for g in raymetrics.GAUGES}, sorted(found)
    for g in raymetrics.GAUGES:
        tags, _ = found[g.prometheus_name]
        assert set(g.tags) <= set(tags), (g.name, tags)
        assert {k: tags[k] for k in raymetrics.JOB_TAGS} == {"run_id": "run-x", "job_name": "job-x", "attempt": "2"}
        assert "job" not in tags   # would arrive as exported_job
    mem_tags, cur = found["ray_sl_job_gpu_memory_mib"]
    assert mem_tags["gpu"] == "0"
    assert 10 < cur <= found["ray_sl_job_gpu_memory_peak_mib"][1] <= (peak or 0) + 1e-6
    assert (found["ray_sl_job_step"][1], found["ray_sl_job_total_steps"][1], found["ray_sl_job_loss"][1]) == (7, 10, 1.5)
