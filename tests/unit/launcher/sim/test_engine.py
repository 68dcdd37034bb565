"""The simulator as the regression test of the scheduling policy: seeded, so exact, no clocks.

Ratios are makespan / max(GPU-seconds / GPUs, critical path) over the work the jobs really did.
"""

from __future__ import annotations

import statistics

import pytest

from launcher.control.states import JobState
from launcher.sim.dag import DagSpec, random_dag
from launcher.sim.engine import Faults, SimConfig, Simulator, simulate
from launcher.spec import RetrySpec


def ratios(policy: str, spec: DagSpec, seeds: range) -> list[float]:
    return [simulate(random_dag(spec, s), SimConfig(policy=policy, seed=s)).ratio for s in seeds]


@pytest.mark.parametrize("spec", [DagSpec(jobs=200), DagSpec(jobs=200, max_needs=2, window=200)],
                         ids=["stages", "wide"])
def test_backfill_stays_near_the_bound_and_ahead_of_the_baselines(spec: DagSpec) -> None:
    seeds = range(8)
    ours, greedy, fifo = (statistics.median(ratios(p, spec, seeds)) for p in ("backfill", "greedy", "fifo"))
    assert ours <= 1.05
    assert ours < greedy < fifo


def test_every_job_runs_once_without_faults_and_never_beats_the_bound() -> None:
    jobs = random_dag(DagSpec(jobs=100, multi_node=0.1), 3)
    r = simulate(jobs, SimConfig(seed=3))
    assert (r.succeeded, r.failed, r.skipped, r.attempts, r.placements) == (100, 0, 0, 100, 100)
    assert r.ratio >= 1.0 and r.makespan_s >= r.bounds.node


def test_failures_restart_from_checkpoints_and_a_give_up_skips_dependants() -> None:
    jobs = random_dag(DagSpec(jobs=300), 1)
    r = simulate(jobs, SimConfig(seed=1, faults=Faults(fail=0.3, hang=0.1),
                                 retry=RetrySpec(max_restarts=1, backoff=5, no_progress_limit=3)))
    assert r.attempts > r.succeeded + r.failed and r.failed > 0 and r.skipped > 0   # restarts, give-ups, skips
    assert r.succeeded + r.failed + r.skipped == 300


def test_the_books_balance_at_the_end() -> None:
    sim = Simulator(random_dag(DagSpec(jobs=150, multi_node=0.05), 2), SimConfig(seed=2, faults=Faults(fail=0.1, hang=0.05)))
    sim.run()
    assert sim.core.holdings == {} and sim.core.books.free_gpus() == sim.core.books.capacity()
    assert all(s.is_terminal for s in sim.core.states.values())
    assert not any(s == JobState.WAITING for s in sim.core.states.values())


def test_launcher_overhead_costs_makespan() -> None:
    jobs = random_dag(DagSpec(jobs=100), 4)
    zero, slow = simulate(jobs, SimConfig(seed=4)), simulate(jobs, SimConfig(seed=4, start_s=30, release_s=10))
    assert slow.makespan_s > zero.makespan_s
