"""Releasing one attempt: py-spy stacks (for a hang), stop the ranks, close its rank groups, free the placement group.

This is the slow part of a restart (py-spy up to 20 s a rank, TERM grace, the GPU-memory release
wait up to a minute), so it runs in a worker thread while the controller goes on watching and
starting the other jobs. Nothing here writes the journal: it returns a `Released` that the
controller records in its own thread (SQLite connections are not shared across threads).
"""

from __future__ import annotations

from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.placement_group import PlacementGroup, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from launcher import checkpoints
from launcher.node.host import GroupHandle, sweep_node
from launcher.node.messages import Released, Stopped, SweepTarget, Unreleased

RPC_TIMEOUT_S = 60.0


def release(run_id: str, agents: list[GroupHandle], pg: PlacementGroup | None, grace: float, dump_stacks: bool,
            sweeps: dict[int, SweepTarget], verify: Path | None = None) -> Released:
    """Blocking; meant for a worker thread. Every step is bounded by a timeout, and an agent that
    cannot answer has its node swept from the journal's records by a task pinned to that node.
    `verify`: a checkpoint the attempt died loading, checked in full once its ranks are gone."""
    out = Released()
    if dump_stacks:   # stacks first, so the cause of a hang can be found, then no long grace
        try:
            ray.get([ag.call("dump_stacks") for ag in agents], timeout=RPC_TIMEOUT_S)
        except (RayError, GetTimeoutError) as e:
            out.notes.append(f"could not dump stacks: {type(e).__name__}")
    refs = [ag.call("stop", grace) for ag in agents]
    for i, ref in enumerate(refs):
        try:
            res: Stopped = ray.get(ref, timeout=grace + 120)
        except (RayActorError, GetTimeoutError, RayError) as e:
            out.notes.append(f"agent {i} did not stop its ranks ({type(e).__name__}); sweeping its node")
            if i in sweeps:
                out.notes.append(_sweep(run_id, sweeps[i]))
            continue
        out.exit_codes.update(res.exit_codes)
        out.still_alive += res.still_alive
        rel = res.release
        if rel is not None and not rel.released:
            out.unreleased.append(Unreleased(i, res.gpus, rel.waited_s, rel.still_held, rel.job_pids_on_gpu))
    for ag in agents:   # the host lives on for the run's other jobs: only this group goes
        try:
            ag.close()
        except (RayError, ValueError):
            pass   # its host is gone
    if pg is not None:
        remove_placement_group(pg)
    if verify is not None:
        out.checkpoint_problem = checkpoints.verify(verify, deep=True)
    return out


def _sweep(run_id: str, target: SweepTarget) -> str:
    strat = NodeAffinitySchedulingStrategy(node_id=target.node, soft=False)
    try:
        hit = ray.get(sweep_node.options(scheduling_strategy=strat).remote(run_id, target.records),
                      timeout=RPC_TIMEOUT_S)
        return f"swept {len(hit)} leftover process(es) on node {target.node[:8]}: {hit}"
    except (RayError, GetTimeoutError) as e:
        return f"could not sweep node {target.node[:8]} ({type(e).__name__}); is the node gone?"
