"""Which methods exist, their parameter schemas and data roles. Imports no torch: the launcher
validates plans with it, and each method's module is imported only inside the rank process."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Callable

from methods import params as P


@dataclass(frozen=True)
class MethodInfo:
    name: str
    params: type[P.Params]
    module: str                                  # methods.<module> with run(job) -> int
    required_data: tuple[str, ...] = ()
    optional_data: tuple[str, ...] = ()
    needs_model: bool = True
    uses_deepspeed: bool = True
    outputs: tuple[str, ...] = field(default=("dir", "result", "metrics", "checkpoints"))

    def runner(self) -> Callable:
        return import_module(self.module).run


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("sft", P.SFTParams, "methods.sft", required_data=("train",), optional_data=("harmful", "eval"),
                   outputs=("dir", "result", "metrics", "checkpoints", "adapter")),
        MethodInfo("synthetic", P.SyntheticParams, "methods.synthetic", needs_model=False, uses_deepspeed=False),
    )
}
