"""Free GPUs per node, as this run's controller knows them (Ray's own view lags behind removals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from launcher.scheduling.model import Shape

# allowed(node id, GPUs it would give) -> whether a node may be used (a reservation's veto)
Allowed = Callable[[str, int], bool]


@dataclass
class Books:
    capacity_of: dict[str, int] = field(default_factory=dict)
    type_of: dict[str, str | None] = field(default_factory=dict)
    free: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, nodes: Iterable[tuple[str, int, str | None]]) -> "Books":
        b = cls()
        for n, gpus, kind in nodes:
            b.capacity_of[n], b.type_of[n], b.free[n] = gpus, kind, gpus
        return b

    def copy(self) -> "Books":
        """A scratch copy for one pass: the capacities and types are shared, only `free` is copied."""
        return Books(self.capacity_of, self.type_of, dict(self.free))

    def matches(self, node: str, gpu_type: str | None) -> bool:
        return gpu_type is None or (self.type_of[node] or "").lower() == gpu_type.lower()

    def choose(self, shape: Shape, allowed: Allowed | None = None) -> tuple[str, ...] | None:
        """Nodes for `shape` now, best fit (the fullest nodes that still fit, so whole nodes stay
        whole for wide jobs), or None. `allowed` may veto a node (a reservation)."""
        g, kind = shape.gpus_per_node, shape.gpu_type
        fit = [(f, n) for n, f in self.free.items()
               if f >= g and (kind is None or self.matches(n, kind)) and (allowed is None or allowed(n, g))]
        if len(fit) < shape.nodes:
            return None
        fit.sort()
        return tuple(n for _, n in fit[: shape.nodes])

    def hold(self, nodes: Iterable[str], gpus_per_node: int, sign: int = 1) -> None:
        for n in nodes:
            self.free[n] -= sign * gpus_per_node

    def hold_gpus(self, gpus: Iterable[tuple[str, int]], sign: int = 1) -> None:
        for n, g in gpus:
            if n not in self.free:   # a node Ray placed a job on that joined after the books were made
                self.capacity_of[n], self.type_of[n], self.free[n] = 0, None, 0
            self.free[n] -= sign * g

    def free_gpus(self) -> int:
        return sum(self.free.values())

    def capacity(self) -> int:
        return sum(self.capacity_of.values())

    def could_ever_fit(self, shape: Shape, lost: Iterable[tuple[str, int]] = ()) -> bool:
        """Whether `shape` fits once every job ends, with the GPUs in `lost` (leaked memory) gone for good."""
        empty = Books(self.capacity_of, self.type_of, dict(self.capacity_of))
        empty.hold_gpus(lost)
        return empty.choose(shape) is not None
