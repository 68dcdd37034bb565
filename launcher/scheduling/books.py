"""Free GPUs per node, as this run's controller knows them (Ray's own view lags behind removals).

A GPU is free (whole), held whole by one job, or shared: packed jobs hold memory on it, up to its
capacity less a headroom (a node whose GPU memory is unknown has no shared GPUs). A shared GPU is
whole again when its last tenant leaves; a job held whole never has a packed job beside it. The
same rule Ray applies to fractional GPU bundles, whose fraction is need / capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from launcher.scheduling.model import Shape

# allowed(node id, GPUs it would give) -> whether a node may be used (a reservation's veto)
Allowed = Callable[[str, int], bool]


def headroom_mib(capacity_mib: int) -> int:
    """What a shared GPU keeps unallocated: fragmentation, a tenant's allocator growing between
    two samples. 1 GiB or 5 %, whichever is more."""
    return max(1024, capacity_mib // 20)


@dataclass
class Books:
    capacity_of: dict[str, int] = field(default_factory=dict)
    type_of: dict[str, str | None] = field(default_factory=dict)
    free: dict[str, int] = field(default_factory=dict)
    gpu_mib: dict[str, int] = field(default_factory=dict)              # node -> memory of each GPU (known ones)
    shared: dict[str, dict[str, int]] = field(default_factory=dict)    # node -> shared GPU id -> MiB its tenants hold

    @classmethod
    def of(cls, nodes: Iterable[tuple[str, int, str | None]], gpu_mib: dict[str, int] | None = None) -> "Books":
        b = cls()
        for n, gpus, kind in nodes:
            b.capacity_of[n], b.type_of[n], b.free[n] = gpus, kind, gpus
        b.gpu_mib = {n: m for n, m in (gpu_mib or {}).items() if m and n in b.capacity_of}
        return b

    def add_node(self, node: str, gpus: int, kind: str | None, gpu_mib: int | None) -> None:
        """A node joined the cluster during the run: its GPUs are offered from the next pass on
        (what a job Ray placed there before we knew of it holds stays held)."""
        held = self.capacity_of.get(node, 0) - self.free.get(node, 0)
        self.capacity_of[node], self.type_of[node], self.free[node] = gpus, kind, gpus - held
        if gpu_mib:
            self.gpu_mib[node] = gpu_mib

    def drop_node(self, node: str) -> None:
        """A node left: nothing more is placed there. What its jobs held is given back by their
        releases as usual, which brings its free count back to 0."""
        if node not in self.capacity_of:
            return
        self.free[node] -= self.capacity_of[node]
        self.capacity_of[node] = 0
        self.gpu_mib.pop(node, None)

    def copy(self) -> "Books":
        """A scratch copy for one pass: the capacities and types are shared; what is held is copied."""
        return Books(self.capacity_of, self.type_of, dict(self.free), self.gpu_mib,
                     {n: dict(g) for n, g in self.shared.items()})

    # ------------------------------------------------------------------ packing

    def usable_mib(self, node: str) -> int:
        cap = self.gpu_mib.get(node, 0)
        return cap - headroom_mib(cap) if cap else 0

    def share_room(self) -> bool:
        """Whether a packed job could start anywhere now (cheap where no GPU memory is known)."""
        return any(self.free[n] > 0 or any(u < self.usable_mib(n) for u in self.shared.get(n, {}).values())
                   for n in self.gpu_mib)

    def choose_share(self, mib: int, gpu_type: str | None = None,
                     allowed: Allowed | None = None) -> tuple[str, str] | None:
        """(node, GPU id) for a packed job of `mib`: the shared GPU it fits tightest, else a whole
        free GPU on the fullest node (so whole nodes stay whole), or None. A new shared GPU's id
        is a guess (the lowest one not shared) that the placement Ray makes corrects."""
        best: tuple[int, str, str] | None = None
        for n, usable in ((n, self.usable_mib(n)) for n in self.gpu_mib):
            if mib > usable or not self.matches(n, gpu_type):
                continue
            for gpu, used in self.shared.get(n, {}).items():
                left = usable - used - mib
                if left >= 0 and (best is None or (left, n, gpu) < best):
                    best = (left, n, gpu)
        if best is not None:
            return best[1], best[2]
        whole = sorted((f, n) for n, f in self.free.items() if f > 0 and n in self.gpu_mib and mib <= self.usable_mib(n)
                       and self.matches(n, gpu_type) and (allowed is None or allowed(n, 1)))
        if not whole:
            return None
        n = whole[0][1]
        taken = self.shared.get(n, {})
        return n, next(str(i) for i in range(len(taken) + 1) if str(i) not in taken)

    def hold_share(self, node: str, gpu: str, mib: int, sign: int = 1) -> None:
        g = self.shared.setdefault(node, {})
        if sign > 0:
            if gpu not in g:
                g[gpu] = 0
                self.free[node] -= 1
            g[gpu] += mib
        elif gpu in g:
            g[gpu] -= mib
            if g[gpu] <= 0:   # its last tenant left: whole again
                del g[gpu]
                self.free[node] += 1

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
        empty = Books(self.capacity_of, self.type_of, dict(self.capacity_of), self.gpu_mib)
        empty.hold_gpus(lost)
        if shape.packed:
            return empty.choose_share(shape.mib, shape.gpu_type) is not None
        return empty.choose(shape) is not None
