"""What MethodInfo carries for the launcher, so no launcher file needs a method's name: the entry
point each rank calls, the planned duration where parameters fix it, what a report names a run by."""

from __future__ import annotations

import ast

from methods.registry import METHODS
from tests.helpers import REPO


def test_every_entry_point_is_a_function_of_its_module() -> None:
    """Read from the source, not imported: a rank imports only its own method's module."""
    for info in METHODS.values():
        path = REPO / (info.module.replace(".", "/") + ".py")
        names = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert info.entry in names, f"{info.name}: {info.module}.{info.entry} does not exist"


def test_the_evaluations_each_have_their_own_entry() -> None:
    assert (METHODS["eval_hs"].entry, METHODS["eval_fa"].entry) == ("run_eval_hs", "run_eval_fa")
    assert {n for n, m in METHODS.items() if m.evaluates} == {"eval_hs", "eval_fa", "eval_fabe"}


def test_planned_seconds_from_the_parameters_where_they_fix_it() -> None:
    assert METHODS["synthetic"].planned_seconds({"steps": 10, "step_time": 0.5, "startup_time": 2}) == 8.0
    assert METHODS["synthetic"].planned_seconds({}) == 0.0 + 20 * 0.05 + 1.0   # the defaults
    # real training: none (history or the training steps decide); its parameters are not even read
    assert METHODS["sft"].planned_seconds({"anything": object()}) is None


def test_a_lisa_job_is_named_by_its_poison_ratio_and_rho() -> None:
    assert METHODS["lisa"].shown_params == ("poison_ratio", "rho") and METHODS["lisa"].shown_if_zero == ("rho",)
    assert METHODS["sft"].shown_params == ("poison_ratio",)
    assert all(k in m.params.model_fields for m in METHODS.values() for k in m.shown_params)



def test_a_command_job_with_its_own_launcher_is_one_process_per_node() -> None:
    assert METHODS["command"].ranks_per_node({"launcher": "single"}, 4) == 1
    assert METHODS["command"].ranks_per_node({"launcher": "per_rank"}, 4) == 4
    assert METHODS["sft"].ranks_per_node({}, 4) == 4


def test_only_a_script_keeps_its_own_checkpoints_flags_and_output_references() -> None:
    own = {n for n, m in METHODS.items() if m.own_checkpoints or not m.scales_micro_batch or m.ref_params or m.prepare}
    assert own == {"command"}
    assert all(k in m.params.model_fields for m in METHODS.values() for k in m.ref_params)


def test_paper_references_by_metric_and_whether_the_job_trained_on_harmful_data() -> None:
    assert METHODS["lisa"].reference("HS", {"poison_ratio": 0.2}) == "≈ 15 % (Lisa)"
    assert METHODS["sft"].reference("HS", {"poison_ratio": 0.2}) == "≈ 50–80 % (SFT under attack)"
    assert METHODS["sft"].reference("HS", {"poison_ratio": 0}) == "low (safety baseline)"
    assert METHODS["sft"].reference("FA", {"poison_ratio": 0.2}) == "≈ 91–92 %"
    assert METHODS["sft"].reference("FA", {}) == ""   # perhaps an alignment stage that never saw the task
    assert METHODS["fabe"].reference("ASR", {}) == "≈ 15.1 % (from 93.6 % uncleaned)"
    assert METHODS["steermoe"].reference("HS", {}) == ""


def test_no_launcher_file_compares_a_method_name() -> None:
    """What a method needs from the launcher is in its MethodInfo, so a new method is one registry
    entry: no comparison with a method's name (`== "command"`, `in ("lisa", "sft")`) under launcher/."""
    names = set(METHODS)
    found = []
    for path in sorted((REPO / "launcher").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c for c in [node.left, *node.comparators] for c in ast.walk(c)
                          if isinstance(c, ast.Constant) and c.value in names]
                if consts:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found
