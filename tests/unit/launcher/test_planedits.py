"""--set assignments and defaults merged under a job (launcher/planedits.py); how load_plan reports
their problems is in test_plan.py."""

import pytest

from launcher.planedits import apply_set, deep_merge


@pytest.mark.parametrize("assignment,expected", [
    ("a.b=3", 3),
    ("a.b=0.25", 0.25),
    ("a.b=1e-4", "1e-4"),              # YAML 1.1: no dot, so a string (write 1.0e-4 for a float)
    ("a.b=1.0e-4", 1.0e-4),
    ("a.b=true", True),
    ("a.b=false", False),
    ("a.b=[1, 2, 3]", [1, 2, 3]),
    ("a.b=[q_proj, v_proj]", ["q_proj", "v_proj"]),
    ("a.b=hello", "hello"),
    ("a.b=null", None),
    ("a.b=", ""),
    ("a.b=x=y", "x=y"),
])
def test_apply_set_types(assignment, expected):
    raw = {"a": {"b": "old", "keep": 1}}
    apply_set(raw, assignment)
    assert raw == {"a": {"b": expected, "keep": 1}}
    assert type(raw["a"]["b"]) is type(expected)


def test_apply_set_creates_nested_keys():
    raw = {"jobs": {"a": {"method": "sft"}}}
    apply_set(raw, "jobs.a.training.lora.r=16")
    apply_set(raw, "defaults.params.steps=4")
    assert raw == {"jobs": {"a": {"method": "sft", "training": {"lora": {"r": 16}}}}, "defaults": {"params": {"steps": 4}}}


@pytest.mark.parametrize("assignment,message", [
    ("jobs.a.params.rho", "--set 'jobs.a.params.rho': expected key.path=value"),
    ("jobs..rho=1", "--set 'jobs..rho=1': empty key in 'jobs..rho'"),
    ("jobs.a.method.x=1", "--set 'jobs.a.method.x=1': 'method' is not a mapping"),
])
def test_apply_set_bad_syntax(assignment, message):
    raw = {"jobs": {"a": {"method": "sft"}}}
    with pytest.raises(ValueError) as ei:
        apply_set(raw, assignment)
    assert str(ei.value) == message


def test_apply_set_bad_yaml_value_is_a_value_error():
    with pytest.raises(ValueError, match=r"^--set 'a=\[1,': value is not valid YAML"):
        apply_set({}, "a=[1,")


def test_deep_merge_job_wins_lists_replaced():
    base = {"training": {"lr": 0.1, "lora": {"r": 8, "target_modules": ["q_proj", "v_proj", "k_proj"]}}, "needs": ["x"]}
    over = {"training": {"batch_size": 4, "lora": {"target_modules": ["o_proj"]}}, "needs": []}
    out = deep_merge(base, over)
    assert out == {"training": {"lr": 0.1, "batch_size": 4, "lora": {"r": 8, "target_modules": ["o_proj"]}}, "needs": []}
    assert base["training"]["lora"]["target_modules"] == ["q_proj", "v_proj", "k_proj"]  # inputs untouched
    out["training"]["lora"]["target_modules"].append("z")
    assert over["training"]["lora"]["target_modules"] == ["o_proj"]
