"""The job DAG: dependency order, cycle reporting, and critical-path priorities."""

from __future__ import annotations

from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Mapping


@dataclass(frozen=True)
class JobGraph:
    needs: Mapping[str, tuple[str, ...]]   # job -> jobs it needs

    def order(self) -> list[str]:
        """Dependency order, ties kept in plan order (stable for printing)."""
        ts = TopologicalSorter({j: self.needs[j] for j in self.needs})
        ts.prepare()
        index = {j: i for i, j in enumerate(self.needs)}
        out: list[str] = []
        while ts.is_active():
            ready = sorted(ts.get_ready(), key=index.__getitem__)
            out.extend(ready)
            ts.done(*ready)
        return out

    def dependants(self, job: str) -> set[str]:
        """Every job downstream of `job` (transitively)."""
        children: dict[str, set[str]] = {j: set() for j in self.needs}
        for j, ups in self.needs.items():
            for u in ups:
                children[u].add(j)
        seen: set[str] = set()
        stack = [job]
        while stack:
            for c in children[stack.pop()]:
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        return seen

    def critical_path(self, cost: Mapping[str, float]) -> dict[str, float]:
        """Longest cost-weighted chain starting at each job (itself included): the scheduling priority."""
        children: dict[str, list[str]] = {j: [] for j in self.needs}
        for j, ups in self.needs.items():
            for u in ups:
                children[u].append(j)
        out: dict[str, float] = {}
        for j in reversed(self.order()):
            out[j] = cost.get(j, 1.0) + max((out[c] for c in children[j]), default=0.0)
        return out


def find_cycle(needs: Mapping[str, tuple[str, ...] | list[str]]) -> list[str] | None:
    """A cycle as a list of job names (first == last), or None."""
    try:
        TopologicalSorter({j: tuple(n) for j, n in needs.items()}).prepare()
    except CycleError as e:
        return list(e.args[1])
    return None
