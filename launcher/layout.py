"""Where things live in a run directory. One place, so driver, agents, ranks and CLI agree.

runs/<run-id>/plan.yaml  run.db  driver.log  peak_memory.csv  report/report.md (+ PNG plots)
runs/<run-id>/jobs/<job>/job-<attempt>.json  logs/attempt-<n>/rank-<r>.log  heartbeat/rank-<r>.json
                         checkpoints/checkpoint-<step>/  metrics.jsonl  result.json  adapter/  seen/
                         gpu_mem.csv  peak_mem.csv  tb/ (TensorBoard)  wandb/  mlruns/ (when asked for)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class JobDir:
    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def attempt_logs(self, attempt: int) -> Path:
        return self.logs / f"attempt-{attempt}"

    def rank_log(self, attempt: int, rank: int) -> Path:
        return self.attempt_logs(attempt) / f"rank-{rank}.log"

    def job_file(self, attempt: int) -> Path:
        return self.root / f"job-{attempt}.json"

    @property
    def heartbeats(self) -> Path:
        return self.root / "heartbeat"

    def heartbeat(self, rank: int) -> Path:
        return self.heartbeats / f"rank-{rank}.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def faults(self) -> Path:
        """When the synthetic method injected each fault (bench/faults.py times detection from it)."""
        return self.root / "faults.jsonl"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def seen(self) -> Path:
        """What each rank saw of its environment (devices, node, rank ids): evidence for tests and audits."""
        return self.root / "seen"

    @property
    def tb(self) -> Path:
        """TensorBoard event files of every attempt (one log dir: a restart appends to the same curves)."""
        return self.root / "tb"

    @property
    def gpu_mem_csv(self) -> Path:
        """Memory timeline, one row per GPU per sample (launcher.monitor)."""
        return self.root / "gpu_mem.csv"

    @property
    def peak_mem_csv(self) -> Path:
        return self.root / "peak_mem.csv"


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.yaml"

    @property
    def db(self) -> Path:
        return self.root / "run.db"

    @property
    def driver_log(self) -> Path:
        return self.root / "driver.log"

    @property
    def driver_lock(self) -> Path:
        return self.root / "driver.lock"

    @property
    def reserve(self) -> Path:
        """Disk space the driver holds while it runs, given back to close the journal on a full disk."""
        return self.root / ".reserve"

    def job(self, name: str) -> JobDir:
        return JobDir(self.root / "jobs" / name)

    @property
    def peak_memory_csv(self) -> Path:
        """Peak memory of every job and GPU (launcher.monitor.write_run_peaks)."""
        return self.root / "peak_memory.csv"

    @property
    def report_dir(self) -> Path:
        """bin/report's output: report.md, report.json and the PNG plots it links."""
        return self.root / "report"

    @property
    def report_md(self) -> Path:
        return self.report_dir / "report.md"


# Outputs a job offers to its dependants through ${job.<output>} references.
OUTPUTS = {
    "dir": lambda j: j.root,
    "adapter": lambda j: j.adapter,
    "result": lambda j: j.result,
    "metrics": lambda j: j.metrics,
    "checkpoints": lambda j: j.checkpoints,
}
