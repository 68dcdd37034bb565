"""Bad input that used to end in a traceback: each is now a plan problem naming the file, the key
and the fix, reported by `bin/launch` (also --dry-run) before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.cli import launch_main
from launcher.pathcheck import NAME_CHARS_MAX, NUL_PROBLEM
from launcher.plan import PlanError, Problem, load_plan
from launcher.resources import ClusterShape

SFT = """\
jobs:
  sft:
    method: sft
    model: {tiny: llama}
    data: {train: train.jsonl}
"""


def dry_run(capsys, plan: Path, *sets: str) -> tuple[int, str]:
    """`bin/launch PLAN --dry-run --set ...` in-process: its exit code and stderr."""
    code = launch_main([str(plan), "--dry-run", *[a for s in sets for a in ("--set", s)]])
    return code, capsys.readouterr().err


def only_problem(path: Path, sets: list[str] | None = None) -> Problem:
    with pytest.raises(PlanError) as ei:
        load_plan(path, sets, cluster=ClusterShape.single(2))
    assert len(ei.value.problems) == 1, ei.value.problems
    return ei.value.problems[0]


# --------------------------------------------------------------------------- 1. not UTF-8

def test_plan_file_that_is_not_utf8(plan_file, capsys):
    path = plan_file(SFT)
    path.write_bytes(b"name: caf\xe9\n" + path.read_bytes())
    assert only_problem(path) == Problem(str(path), "(file)", "not UTF-8 text: byte 0xe9 at line 1, column 10; "
                                                              "save the plan as UTF-8")
    code, err = dry_run(capsys, path)
    assert code == 2 and "(file): not UTF-8 text" in err and "Traceback" not in err


def test_plan_file_that_is_a_directory(tmp_path):
    assert only_problem(tmp_path) == Problem(str(tmp_path), "(file)", "cannot read the plan: Is a directory")


# --------------------------------------------------------------------------- 2. a.b=1 into a scalar

def test_set_below_a_scalar_is_a_problem(plan_file):
    path = plan_file(SFT)
    assert only_problem(path, ["jobs.sft.method.x=1"]) == Problem(
        str(path), "--set", "--set 'jobs.sft.method.x=1': 'method' is not a mapping")


def test_dotted_matrix_key_below_a_scalar_is_a_problem(plan_file, capsys):
    path = plan_file(SFT + "    training: {max_steps: 3}\n    matrix: {training.max_steps.x: [1, 2]}\n")
    assert only_problem(path) == Problem(
        str(path), "jobs.sft.matrix.training.max_steps.x",
        "training.max_steps is 3, not a mapping: a dotted matrix key must name a value (e.g. training.max_steps)")
    code, err = dry_run(capsys, path)
    assert code == 2 and "Traceback" not in err


def test_matrix_key_that_is_not_a_string_is_a_problem(plan_file):
    path = plan_file(SFT + "    matrix: {1: [1, 2]}\n")
    assert only_problem(path) == Problem(str(path), "jobs.sft.matrix.1",
                                         "a matrix key is a param name or a dotted path such as training.lr (got 1)")


def test_set_value_with_a_nul_byte_is_a_problem(plan_file):
    path = plan_file(SFT)
    p = only_problem(path, ["jobs.sft.data.train=a\0b"])
    assert p.key == "--set" and "value is not valid YAML" in p.message


# --------------------------------------------------------------------------- 3. NUL bytes

NUL = "data/a\\0b.jsonl"   # YAML's escape: the loaded string holds a NUL byte


def sft_plan(snippet: str) -> str:
    """One sft job with `snippet` as one of its keys; a tiny model and a data file unless it sets them."""
    text = "jobs:\n  sft:\n    method: sft\n    " + snippet + "\n"
    if "model:" not in snippet:
        text += "    model: {tiny: llama}\n"
    if "data:" not in snippet:
        text += "    data: {train: train.jsonl}\n"
    return text


@pytest.mark.parametrize("snippet,key", [
    (f'data: {{train: "{NUL}"}}', "jobs.sft.data.train"),
    (f'data: {{train: {{source: "{NUL}"}}}}', "jobs.sft.data.train.source"),
    (f'model: {{path: "{NUL}"}}', "jobs.sft.model.path"),
    (f'model: {{gguf: "{NUL}"}}', "jobs.sft.model.gguf"),
    (f'model: {{tiny: llama, adapter: "{NUL}"}}', "jobs.sft.model.adapter"),
    (f'deepspeed: "{NUL}"', "jobs.sft.deepspeed"),
    (f'env: {{HF_HOME: "{NUL}"}}', "jobs.sft.env.HF_HOME"),
])
def test_nul_byte_in_a_value_is_a_problem(plan_file, capsys, snippet, key):
    path = plan_file(sft_plan(snippet))
    assert only_problem(path) == Problem(str(path), key, NUL_PROBLEM)
    code, err = dry_run(capsys, path)
    assert code == 2 and "Traceback" not in err


def test_nul_byte_in_an_eval_output_name_is_a_problem(plan_file):
    path = plan_file('jobs:\n  hs:\n    method: eval_hs\n    model: {tiny: llama}\n'
                     '    data: {eval: train.jsonl}\n    params: {output_name: "a\\0b"}\n')
    p = only_problem(path)
    assert p.key == "jobs.hs.params.output_name" and "NUL byte" in p.message


# --------------------------------------------------------------------------- 4. over-long names

LONG = "a" * 300


def test_over_long_plan_name_is_a_problem(plan_file, capsys):
    path = plan_file(f"name: {LONG}\n" + SFT)
    assert only_problem(path) == Problem(
        str(path), "name", f"300 characters; at most {NAME_CHARS_MAX} (it starts every run id, a directory name)")
    code, err = dry_run(capsys, path)
    assert code == 2 and "Traceback" not in err


def test_over_long_plan_file_name_without_name_is_a_problem(plan_file):
    path = plan_file(SFT, name="p" * 240 + ".yaml")
    p = only_problem(path)
    assert p.key == "name" and p.message.startswith(f"the plan file's name ({'p' * 240!r:.20}")


def test_plan_name_with_a_slash_is_a_problem(plan_file):
    path = plan_file("name: a/b\n" + SFT)
    assert only_problem(path) == Problem(str(path), "name", "'a/b' uses letters, digits, _ . = - only "
                                                            "(it starts every run id, a directory name)")


def test_over_long_job_name_is_a_problem(plan_file, capsys):
    path = plan_file(SFT.replace("  sft:", f"  {LONG}:"))
    assert only_problem(path) == Problem(str(path), f"jobs.{LONG}",
                                         f"job name of 300 characters; at most {NAME_CHARS_MAX} (it names the "
                                         "job's directory and files)")
    code, err = dry_run(capsys, path)
    assert code == 2 and "Traceback" not in err


def test_over_long_sweep_child_name_is_a_problem(plan_file):
    path = plan_file(SFT + "    params: {template: alpaca}\n    name_template: '{job}_{template}'\n"
                     f"    matrix: {{template: [{LONG}]}}\n")
    p = only_problem(path)
    assert p.key == "jobs.sft.name_template" and f"at most {NAME_CHARS_MAX}" in p.message


# --------------------------------------------------------------------------- 5. over-long path components

@pytest.mark.parametrize("snippet,key", [
    (f"data: {{train: data/{LONG}.jsonl}}", "jobs.sft.data.train"),
    (f"model: {{path: models/{LONG}}}", "jobs.sft.model.path"),
    (f"model: {{gguf: {LONG}.gguf}}", "jobs.sft.model.gguf"),
    (f"deepspeed: {LONG}", "jobs.sft.deepspeed"),
])
def test_over_long_path_component_is_a_problem(plan_file, capsys, snippet, key):
    path = plan_file(sft_plan(snippet))
    p = only_problem(path)
    assert p.key == key
    assert p.message.startswith("a path component of ") and "file names are at most 255 bytes" in p.message
    code, err = dry_run(capsys, path)
    assert code == 2 and "Traceback" not in err


def test_over_long_path_is_a_problem(plan_file):
    path = plan_file("jobs:\n  sft:\n    method: sft\n    model: {tiny: llama}\n"
                     f"    data: {{train: {'a/' * 2100}x.jsonl}}\n")
    p = only_problem(path)
    assert p.key == "jobs.sft.data.train" and "paths are at most 4095 bytes" in p.message


@pytest.mark.parametrize("output_name,fragment", [
    (LONG, "300 bytes; at most 200"),
    ("a/b", "a plain file name"),
    ("..", "a plain file name"),
])
def test_eval_output_name_must_be_a_short_plain_file_name(plan_file, output_name, fragment):
    path = plan_file('jobs:\n  hs:\n    method: eval_hs\n    model: {tiny: llama}\n'
                     f'    data: {{eval: train.jsonl}}\n    params: {{output_name: "{output_name}"}}\n')
    p = only_problem(path)
    assert p.key == "jobs.hs.params.output_name" and fragment in p.message, p


# --------------------------------------------------------------------------- found by the fuzzer

@pytest.mark.parametrize("content,fragment", [
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"zero_optimization": [2]}', "zero_optimization must be an object"),
    (b'{"zero_optimization": {"stage": "auto"}}', "zero_optimization.stage must be 0, 1, 2 or 3 (got 'auto')"),
    (b"\x7fELF\x02\x01\x01\xff\xfe", "cannot read"),
    (b"[" * 100_000, "nested too deeply"),
])
def test_ds_config_that_cannot_be_used(plan_file, tmp_path, content, fragment):
    (tmp_path / "ds.json").write_bytes(content)
    path = plan_file(SFT + "    deepspeed: ds.json\n")
    p = only_problem(path)
    assert p.key == "jobs.sft.deepspeed" and fragment in p.message, p


@pytest.mark.parametrize("template,fragment", [
    ("{method.upper}", "unknown field 'method.upper'"),
    ("{job[0]}", "unknown field 'job[0]'"),
    ("{method:>999999999}", "{method:>999999999} in '{method:>999999999}': fields take no conversion or format here"),
    ("{method!r}", "fields take no conversion or format here; write {method}"),
    ("{job", "is not a template"),
])
def test_name_template_is_plain_substitution(plan_file, template, fragment):
    path = plan_file(SFT + f"    name_template: '{template}'\n")
    p = only_problem(path)
    assert p.key == "jobs.sft.name_template" and fragment in p.message, p


@pytest.mark.parametrize("text,key,fragment", [
    ('name: "\\ud800"\n' + SFT, "name", "not valid Unicode (a lone surrogate"),
    ("jobs: &a {x: *a}\n", "jobs.x.x.x", "nested more than 40 levels deep"),
    (SFT + "    model: {path: '~sl_no_such_user/m'}\n", "jobs.sft.model.path", "neither an existing directory nor a hub id"),
])
def test_odd_text_is_a_problem(plan_file, text, key, fragment):
    p = only_problem(plan_file(text))
    assert p.key.startswith(key) and fragment in p.message, p


def test_deeply_nested_set_value_is_a_problem(plan_file):
    p = only_problem(plan_file(SFT), ["jobs.sft.params.x=" + "[" * 2000 + "]" * 2000])
    assert p.key == "--set" and "nested too deeply" in p.message
