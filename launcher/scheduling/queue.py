"""The ready jobs, in priority order, kept per shape.

A pass walks the jobs highest priority first, but once no job of some shape fits (all 8-GPU jobs
while no node is empty) the rest of that shape is skipped whole: the walk is a merge of one sorted
list per shape, and a shape the pass gave up on drops out of the merge. With thousands of ready
jobs and a handful of shapes, a pass costs what it places, not the length of the queue.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from typing import Container, Iterable, Iterator

from launcher.scheduling.model import Candidate, Shape

Key = tuple[float, int, str]   # (-priority, plan order, name): smallest first


def key(c: Candidate) -> Key:
    return (-c.priority, c.order, c.name)


class ReadyQueue:
    def __init__(self, candidates: Iterable[Candidate] = ()):
        self._lists: dict[Shape, list[Key]] = {}
        self._by_name: dict[str, Candidate] = {}
        for c in candidates:
            self.add(c)

    def add(self, c: Candidate) -> None:
        if c.name in self._by_name:
            self.remove(c.name)
        self._by_name[c.name] = c
        insort(self._lists.setdefault(c.shape, []), key(c))

    def remove(self, name: str) -> None:
        c = self._by_name.pop(name, None)
        if c is None:
            return
        lst = self._lists[c.shape]
        del lst[bisect_left(lst, key(c))]
        if not lst:
            del self._lists[c.shape]

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def shapes(self) -> list[Shape]:
        return list(self._lists)

    def all(self) -> list[Candidate]:
        """Every ready job, highest priority first (for baselines and printing)."""
        return list(self.walk(()))

    def walk(self, skip: Container[Shape]) -> Iterator[Candidate]:
        """Highest priority first; a shape added to `skip` while walking is not walked further."""
        heap = [(lst[0], shape, 0) for shape, lst in self._lists.items()]
        heapq.heapify(heap)
        while heap:
            k, shape, i = heapq.heappop(heap)
            if shape in skip:
                continue
            yield self._by_name[k[2]]
            lst = self._lists.get(shape, ())
            if i + 1 < len(lst):
                heapq.heappush(heap, (lst[i + 1], shape, i + 1))
