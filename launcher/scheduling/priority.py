"""Critical-path priorities in seconds, aware of width.

A job's priority is the longest chain of estimated seconds from its start to the end of the DAG
(itself included). Width breaks near-ties: of two jobs with the same chain behind them, the wider
one goes first, since it is the one that cannot squeeze into the gaps later.
"""

from __future__ import annotations

from graphlib import TopologicalSorter
from typing import Mapping


def bottom_levels(needs: Mapping[str, tuple[str, ...]], seconds: Mapping[str, float]) -> dict[str, float]:
    """Longest estimated chain starting at each job, itself included."""
    children: dict[str, list[str]] = {j: [] for j in needs}
    for j, ups in needs.items():
        for u in ups:
            children[u].append(j)
    out: dict[str, float] = {}
    for j in reversed(list(TopologicalSorter({j: tuple(u) for j, u in needs.items()}).static_order())):
        out[j] = seconds.get(j, 0.0) + max((out[c] for c in children[j]), default=0.0)
    return out


def priorities(needs: Mapping[str, tuple[str, ...]], seconds: Mapping[str, float],
               width: Mapping[str, int], total_gpus: int) -> dict[str, float]:
    """Bottom level, plus a width term worth at most a small share of one job's own time: it
    orders jobs whose chains tie, never jumps a much longer chain."""
    levels = bottom_levels(needs, seconds)
    return {j: levels[j] + 0.05 * seconds.get(j, 0.0) * width.get(j, 1) / max(1, total_gpus) for j in needs}
