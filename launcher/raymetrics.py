"""Job progress as Ray metrics (ray.util.metrics), so the dashboard's Grafana panels show it.

Memory gauges come from launcher.monitor inside the node agents; progress is known to the
driver, so it is published here, tagged run and job.
"""

from __future__ import annotations

from ray.util.metrics import Gauge

TAGS = ("run", "job")


class ProgressMetrics:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self.step = Gauge("sl_job_step", "current training step of the job", tag_keys=TAGS)
        self.total = Gauge("sl_job_total_steps", "planned training steps of the job", tag_keys=TAGS)
        self.loss = Gauge("sl_job_loss", "latest training loss reported by rank 0", tag_keys=TAGS)
        self.attempt = Gauge("sl_job_attempt", "attempt number (1 + restarts)", tag_keys=TAGS)

    def update(self, job: str, step: int, total: int | None, loss: float | None, attempt: int) -> None:
        tags = {"run": self.run_id, "job": job}
        self.step.set(step, tags=tags)
        self.attempt.set(attempt, tags=tags)
        if total is not None:
            self.total.set(total, tags=tags)
        if loss is not None:
            self.loss.set(loss, tags=tags)
