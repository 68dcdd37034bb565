"""Helpers for launcher unit tests: small plans written into tmp_path from YAML strings."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable

import pytest

from launcher.plan import Plan, PlanError, Problem, load_plan
from launcher.resources import ClusterShape

DATA_ROW = '{"instruction": "Say hi", "input": "", "output": "hi"}\n'


@pytest.fixture
def plan_file(tmp_path: Path) -> Callable[..., Path]:
    """Write `text` (dedented YAML) as tmp_path/<name>, plus the data files a valid plan refers to."""

    def write(text: str, name: str = "plan.yaml", data: tuple[str, ...] = ("train.jsonl", "harmful.jsonl")) -> Path:
        for d in data:
            (tmp_path / d).write_text(DATA_ROW)
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def load(plan_file: Callable[..., Path]) -> Callable[..., Plan]:
    """Write and load a plan on a one-node, two-GPU cluster."""

    def go(text: str, sets: list[str] | None = None, cluster: ClusterShape | None = ClusterShape.single(2)) -> Plan:
        return load_plan(plan_file(text), sets=sets, cluster=cluster)

    return go


@pytest.fixture
def problems(plan_file: Callable[..., Path]) -> Callable[..., list[Problem]]:
    """Write a plan that must fail; return its problems."""

    def go(text: str, sets: list[str] | None = None, cluster: ClusterShape | None = ClusterShape.single(2)) -> list[Problem]:
        with pytest.raises(PlanError) as ei:
            load_plan(plan_file(text), sets=sets, cluster=cluster)
        return ei.value.problems

    return go

