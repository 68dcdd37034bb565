"""Random DAGs shaped like experiment pipelines: chains of stages with fan-out and fan-in."""

from __future__ import annotations

import random
from dataclasses import dataclass

from launcher.scheduling.model import Shape


@dataclass(frozen=True)
class SimJob:
    name: str
    needs: tuple[str, ...]
    shape: Shape
    seconds: float            # the job's own work, start of its ranks to their exit, without failures


@dataclass(frozen=True)
class DagSpec:
    jobs: int = 200
    widths: tuple[int, ...] = (1, 2, 4, 8)
    width_weights: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    multi_node: float = 0.0       # share of jobs spanning 2 whole nodes
    median_s: float = 600.0
    sigma: float = 0.8            # lognormal spread of durations
    max_needs: int = 3
    window: int = 40              # needs come from the last `window` jobs: stages, not one big fan-in
    pipelines: int = 1            # independent pipelines (a sweep): jobs are dealt round-robin to them


def random_dag(spec: DagSpec, seed: int, gpus_per_node: int = 8) -> list[SimJob]:
    rng = random.Random(seed)
    out: list[SimJob] = []
    lines: list[list[SimJob]] = [[] for _ in range(spec.pipelines)]
    for i in range(spec.jobs):
        line = lines[i % spec.pipelines]
        recent = line[-spec.window:]
        k = min(len(recent), rng.choice(range(spec.max_needs + 1)))
        needs = tuple(j.name for j in rng.sample(recent, k))
        if spec.multi_node and rng.random() < spec.multi_node:
            shape = Shape(2, gpus_per_node)
        else:
            shape = Shape(1, min(gpus_per_node, rng.choices(spec.widths, spec.width_weights)[0]))
        seconds = max(1.0, rng.lognormvariate(0, spec.sigma) * spec.median_s)
        out.append(SimJob(f"j{i:05d}", needs, shape, seconds))
        line.append(out[-1])
    return out
