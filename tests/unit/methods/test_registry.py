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

