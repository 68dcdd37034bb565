"""The launcher's Ray metrics (ray.util.metrics gauges): one definition of every gauge and its tags.

Progress is known to the driver (`ProgressMetrics`, here); memory to the node agents' samplers
(launcher.monitor, which takes its gauges from here). In Prometheus each appears as `ray_<name>`.

All gauges carry the same job tags, so progress and memory join in one query (`on (run_id,
job_name, attempt)`); memory gauges add node and gpu. `job_name`, not `job`: Prometheus renames a
scraped `job` label (its own) to `exported_job`. cluster/grafana/launcher-dashboard.json queries
these names; tests/unit/launcher/test_raymetrics.py checks that it uses nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROMETHEUS_PREFIX = "ray_"   # Ray's exporter prefixes application metrics
JOB_TAGS = ("run_id", "job_name", "attempt")
GPU_TAGS = (*JOB_TAGS, "node", "gpu")


@dataclass(frozen=True)
class GaugeSpec:
    name: str
    description: str
    tags: tuple[str, ...]

    @property
    def prometheus_name(self) -> str:
        return PROMETHEUS_PREFIX + self.name


STEP = GaugeSpec("sl_job_step", "current training step of the job", JOB_TAGS)
TOTAL_STEPS = GaugeSpec("sl_job_total_steps", "planned training steps of the job", JOB_TAGS)
LOSS = GaugeSpec("sl_job_loss", "latest training loss reported by rank 0", JOB_TAGS)
ATTEMPT = GaugeSpec("sl_job_attempt", "attempt number (1 + restarts)", JOB_TAGS)
GPU_MEMORY = GaugeSpec("sl_job_gpu_memory_mib", "GPU memory held by the job's processes (MiB)", GPU_TAGS)
GPU_MEMORY_PEAK = GaugeSpec("sl_job_gpu_memory_peak_mib", "Peak GPU memory of the job's processes (MiB)", GPU_TAGS)
GAUGES = (STEP, TOTAL_STEPS, LOSS, ATTEMPT, GPU_MEMORY, GPU_MEMORY_PEAK)


def job_tags(run_id: str, job_name: str, attempt: int) -> dict[str, str]:
    return {"run_id": run_id, "job_name": job_name, "attempt": str(attempt)}


def gpu_tags(run_id: str, job_name: str, attempt: int, node: str, gpu: str) -> dict[str, str]:
    return {**job_tags(run_id, job_name, attempt), "node": node, "gpu": gpu}


def make_gauge(spec: GaugeSpec) -> Any:
    from ray.util.metrics import Gauge   # here, so that importing this module needs no Ray
    return Gauge(spec.name, spec.description, tag_keys=spec.tags)


class ProgressMetrics:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self.step, self.total, self.loss, self.attempt = (make_gauge(s) for s in (STEP, TOTAL_STEPS, LOSS, ATTEMPT))

    def update(self, job: str, step: int, total: int | None, loss: float | None, attempt: int) -> None:
        tags = job_tags(self.run_id, job, attempt)
        self.step.set(step, tags=tags)
        self.attempt.set(attempt, tags=tags)
        if total is not None:
            self.total.set(total, tags=tags)
        if loss is not None:
            self.loss.set(loss, tags=tags)
