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
        MethodInfo("lisa", P.LisaParams, "methods.lisa", required_data=("train", "guide"), optional_data=("harmful", "eval"),
                   outputs=("dir", "result", "metrics", "checkpoints", "adapter")),
        # Evaluation jobs generate and judge; no optimizer, so no DeepSpeed (ranks shard the prompts).
        MethodInfo("eval_hs", P.EvalHSParams, "methods.evaluate", required_data=("eval",), uses_deepspeed=False,
                   outputs=("dir", "result")),
        MethodInfo("eval_fa", P.EvalFAParams, "methods.evaluate", required_data=("eval",), uses_deepspeed=False,
                   outputs=("dir", "result")),
        MethodInfo("fabe", P.FABEParams, "methods.fabe", required_data=("train",), optional_data=("eval",),
                   outputs=("dir", "result", "metrics", "checkpoints", "adapter")),
        MethodInfo("eval_fabe", P.FABEEvalParams, "methods.fabe_eval", required_data=("test",), uses_deepspeed=False,
                   outputs=("dir", "result")),
        # steermoe_analysis writes <dir>/steermoe_experts.json; steermoe reads it as data 'experts'
        # (e.g. ${analysis.dir}/steermoe_experts.json) or runs the analysis itself first.
        MethodInfo("steermoe_analysis", P.SteerMoEAnalysisParams, "methods.steermoe_analysis", required_data=("train",),
                   uses_deepspeed=False, outputs=("dir", "result")),
        MethodInfo("steermoe", P.SteerMoEParams, "methods.steermoe", required_data=("train",), optional_data=("experts",),
                   outputs=("dir", "result", "metrics", "checkpoints")),
        MethodInfo("synthetic", P.SyntheticParams, "methods.synthetic", needs_model=False, uses_deepspeed=False),
        # The researcher's own script: it brings its own model, data and DeepSpeed (if any).
        MethodInfo("command", P.CommandParams, "methods.command", needs_model=False, uses_deepspeed=False),
    )
}
