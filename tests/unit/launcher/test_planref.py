"""Plan reference and JSON Schema: generated files up to date, shipped plans valid, typos flagged."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from launcher import __main__ as launcher_main
from launcher import planref
from methods.registry import METHODS

REPO = Path(__file__).resolve().parents[3]
PLANS = sorted((REPO / "plans").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = planref.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator: jsonschema.Draft202012Validator, text: str) -> list[str]:
    plan = yaml.safe_load(textwrap.dedent(text))
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(plan)]


# --------------------------------------------------------------------------- generated files are current

def test_readme_block_is_current():
    text = (REPO / "README.md").read_text()
    assert planref.START in text and planref.END in text, "README.md lost its plan-reference markers"
    assert planref.readme_block(text) == planref.markdown(), \
        f"README's plan reference is stale: run `{planref.REGENERATE}`"


def test_schema_file_is_current():
    assert (REPO / "plans" / "plan.schema.json").read_text() == planref.schema_text(), \
        f"plans/plan.schema.json is stale: run `{planref.REGENERATE}`"


def test_markdown_has_a_table_per_section_and_method():
    md = planref.markdown()
    for title, _, _ in planref.SECTIONS:
        assert title in md
    for name in METHODS:
        assert f"#### params: `{name}`" in md
    assert "| `rho` |" in md and "| `guide_data_num` |" in md


# --------------------------------------------------------------------------- what the schema accepts

@pytest.mark.parametrize("path", PLANS, ids=[p.name for p in PLANS])
def test_shipped_plans_validate(validator, path):
    problems = errors(validator, path.read_text())
    assert not problems, "\n".join(problems)


def test_loader_shorthands_and_references_validate(validator, load):
    # Forms only before-validators know about: data and hang shorthands, ${job.output}, dotted matrix keys.
    text = """
        defaults:
          model: {tiny: llama}
          hang: 120
        jobs:
          sft:
            method: sft
            data: {train: train.jsonl, harmful: {source: harmful.jsonl, limit: 4}}
            matrix: {poison_ratio: [0.1, 0.2], training.lr: [0.001]}
            name_template: "sft_{poison_ratio}_{lr}"
            hang: auto
          lisa:
            method: lisa
            needs: [sft]
            model: {tiny: llama, adapter: "${sft_0.1_0.001.adapter}"}
            data: {train: train.jsonl, guide: train.jsonl}
            params: {rho: 3, alignment_step: 2}
    """
    assert not errors(validator, text)
    assert list(load(text).jobs) == ["sft_0.1_0.001", "sft_0.2_0.001", "lisa"]  # the loader takes it too


def test_method_from_defaults_checks_job_params(validator):
    text = """
        defaults: {method: synthetic, params: {steps: 3}}
        jobs:
          a: {params: {steps: 5}}
          b: {params: {stepz: 5}}
    """
    got = errors(validator, text)
    assert len(got) == 1 and "stepz" in got[0] and got[0].startswith("$.jobs.b.params"), got


# --------------------------------------------------------------------------- what it rejects

def test_misspelt_lisa_param_fails(validator):
    got = errors(validator, """
        jobs:
          lisa:
            method: lisa
            model: {tiny: llama}
            data: {train: t.jsonl, guide: g.jsonl}
            params: {rhoo: 3}
    """)
    assert len(got) == 1 and "rhoo" in got[0] and got[0].startswith("$.jobs.lisa.params"), got


def test_unknown_job_key_fails(validator):
    got = errors(validator, """
        jobs:
          sft: {method: sft, data: {train: t.jsonl}, trainig: {lr: 0.001}}
    """)
    assert len(got) == 1 and "trainig" in got[0], got


@pytest.mark.parametrize("body, where, fragment", [
    ("{method: sfft}", "$.jobs.j.method", "'sfft' is not one of"),
    ("{data: {train: t.jsonl}}", "$.jobs.j", "'method' is a required property"),
    ("{method: sft, data: {guide: g.jsonl}}", "$.jobs.j.data", "'guide' is not one of"),
    ("{method: lisa, matrix: {rhoo: [1, 2]}}", "$.jobs.j.matrix", "'rhoo'"),
    ("{method: lisa, matrix: {rho: [-1]}}", "$.jobs.j.matrix.rho[0]", "-1"),
    ("{method: sft, hang: 0}", "$.jobs.j.hang", "0 is not valid"),
    ("{method: sft, training: {lora: {r: 0}}}", "$.jobs.j.training.lora", "'r': 0"),
])
def test_other_mistakes_fail(validator, body, where, fragment):
    got = errors(validator, f"jobs:\n  j: {body}\n")
    assert any(g.startswith(f"{where}: ") and fragment in g for g in got), got


def test_bad_job_name_and_empty_jobs_fail(validator):
    assert errors(validator, "jobs: {'bad name': {method: synthetic}}")
    assert errors(validator, "jobs: {}")


# --------------------------------------------------------------------------- the command

def test_schema_command_prints_json(capsys):
    assert launcher_main.main(["schema", "--json"]) == 0
    out = capsys.readouterr().out
    schema: dict[str, Any] = json.loads(out)
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["$defs"]["Job"]["properties"]["method"]["enum"] == list(METHODS)


def test_schema_command_prints_markdown(capsys):
    assert planref.main(["--markdown"]) == 0
    assert capsys.readouterr().out == planref.markdown()
