"""Which methods exist, their parameter schemas and data roles. Imports no torch: the launcher
validates plans with it, and each method's module is imported only inside the rank process."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Callable

from methods import command_plan, params as P

# prepare(params, plan_dir, where, err) -> params: plan-time checks, paths made absolute
Prepare = Callable[[dict[str, Any], Path, str, Callable[[str, str], None]], dict[str, Any]]


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
    entry: str = "run"                           # the function of `module` the rank calls
    shown_params: tuple[str, ...] = ()           # what bin/report names a job by besides its method (when set, not 0)
    shown_if_zero: tuple[str, ...] = ()          # of those, the ones whose 0 still tells runs apart (Lisa's rho 0 = SFT)
    evaluates: bool = False                      # judges its first upstream job's model (reports show that one)
    prepare: Prepare | None = None               # plan-time checks of its params beyond the schema
    ref_params: tuple[str, ...] = ()             # list params whose items may name ${job.output} (a script's argv)
    own_checkpoints: bool = False                # saves where its own code saves: takes checkpoint.glob / resume_arg
    scales_micro_batch: bool = True              # an OOM may halve training.batch_size (a script reads its own flags)
    references: tuple[tuple[str, str], ...] = ()        # metric of a job evaluating it -> the paper's value
    clean_references: tuple[tuple[str, str], ...] = ()  # the same where it trains on no harmful data (poison 0)

    def runner(self) -> Callable:
        return getattr(import_module(self.module), self.entry)

    def planned_seconds(self, params: dict) -> float | None:
        """How long the job's work is planned to take where its parameters say (a synthetic job's
        steps x step time); None: learned from history or from the training steps."""
        if self.params.planned_seconds is P.Params.planned_seconds:   # nothing to read: no validation pass
            return None
        return self.params.model_validate(params).planned_seconds()

    def ranks_per_node(self, params: dict, gpus_per_node: int) -> int:
        """Processes the launcher starts on each node: one per GPU unless the params say otherwise."""
        return self.params.ranks_per_node(params, gpus_per_node)

    def reference(self, metric: str, params: dict) -> str:
        """The paper/seed value (METHODS.md) a job evaluating this one should approach, or ''."""
        try:
            clean = float(params.get("poison_ratio") or 0) <= 0
        except (TypeError, ValueError):   # unreadable: no harmful data counted, as before
            clean = True
        table = dict(self.references)
        if clean:
            table.update(self.clean_references)
        return table.get(metric, "")


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("sft", P.SFTParams, "methods.sft", required_data=("train",), optional_data=("harmful", "eval"),
                   outputs=("dir", "result", "metrics", "checkpoints", "adapter"), shown_params=("poison_ratio",),
                   references=(("HS", "≈ 50–80 % (SFT under attack)"), ("FA", "≈ 91–92 %")),
                   # Without harmful data an sft job may be an alignment stage that never saw the task,
                   # so no FA value is claimed for it (the demo's stage1_fa would read 0 against 91 %).
                   clean_references=(("HS", "low (safety baseline)"), ("FA", ""))),
        MethodInfo("lisa", P.LisaParams, "methods.lisa", required_data=("train", "guide"), optional_data=("harmful", "eval"),
                   outputs=("dir", "result", "metrics", "checkpoints", "adapter"), shown_params=("poison_ratio", "rho"),
                   shown_if_zero=("rho",), references=(("HS", "≈ 15 % (Lisa)"), ("FA", "≈ 91–92 %"))),
        # Evaluation jobs generate and judge; no optimizer, so no DeepSpeed (ranks shard the prompts).
        MethodInfo("eval_hs", P.EvalHSParams, "methods.evaluate", required_data=("eval",), uses_deepspeed=False,
                   outputs=("dir", "result"), entry="run_eval_hs", evaluates=True),
        MethodInfo("eval_fa", P.EvalFAParams, "methods.evaluate", required_data=("eval",), uses_deepspeed=False,
                   outputs=("dir", "result"), entry="run_eval_fa", evaluates=True),
        MethodInfo("fabe", P.FABEParams, "methods.fabe", required_data=("train",), optional_data=("eval",),
                   outputs=("dir", "result", "metrics", "checkpoints", "adapter"),
                   references=(("ASR", "≈ 15.1 % (from 93.6 % uncleaned)"),)),
        MethodInfo("eval_fabe", P.FABEEvalParams, "methods.fabe_eval", required_data=("test",), uses_deepspeed=False,
                   outputs=("dir", "result"), evaluates=True),
        # steermoe_analysis writes <dir>/steermoe_experts.json; steermoe reads it as data 'experts'
        # (e.g. ${analysis.dir}/steermoe_experts.json) or runs the analysis itself first.
        MethodInfo("steermoe_analysis", P.SteerMoEAnalysisParams, "methods.steermoe_analysis", required_data=("train",),
                   uses_deepspeed=False, outputs=("dir", "result")),
        MethodInfo("steermoe", P.SteerMoEParams, "methods.steermoe", required_data=("train",), optional_data=("experts",),
                   outputs=("dir", "result", "metrics", "checkpoints")),
        MethodInfo("synthetic", P.SyntheticParams, "methods.synthetic", needs_model=False, uses_deepspeed=False),
        # The researcher's own script: it brings its own model, data and DeepSpeed (if any).
        MethodInfo("command", P.CommandParams, "methods.command", needs_model=False, uses_deepspeed=False,
                   prepare=command_plan.resolve, ref_params=("argv",), own_checkpoints=True, scales_micro_batch=False),
    )
}
