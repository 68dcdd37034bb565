"""The driver process's run: the controller (launcher/control) wired to the Ray executor (launcher/node).

Only here do the two meet: the controller holds the plan, the journal and the decisions and never
touches Ray; the executor holds placement groups and node hosts and never writes the journal.
"""

from __future__ import annotations

import os

from launcher.cluster import local_gpus, shape_from_ray
from launcher.control.controller import Controller
from launcher.journal import Journal
from launcher.layout import RunDir
from launcher.node.executor import RayExecutor
from launcher.plan import Plan
from launcher.raymetrics import ProgressMetrics
from launcher.resources import ClusterShape
from launcher.scheduling.books import Books


def run(plan: Plan, rd: RunDir, journal: Journal, env: dict[str, dict[str, str]], shape: ClusterShape,
        policy: str = "backfill") -> str:
    """Runs the plan to its end on the Ray cluster this process is connected to; the run's final state."""
    run_id = rd.root.name
    books = Books.of(((n.node_id, n.gpus, n.gpu_type) for n in shape.nodes),
                     {n.node_id: n.gpu_mib for n in shape.nodes if n.gpu_mib})
    executor = RayExecutor(run_id, shape, shape_from_ray)
    # What the monitor measures peaks with here (its `auto`): needs from earlier runs must match it.
    backend = os.environ.get("SL_MONITOR_BACKEND", "auto")
    if backend == "auto":
        backend = "nvml" if local_gpus()[0] else "host"
    controller = Controller(plan, rd, journal, env, books, executor, policy, metrics=ProgressMetrics(run_id),
                            memory_backend=backend)
    return controller.run()
