"""`python -m launcher schema [--json | --markdown | --write]`: the plan reference, generated.

--json (the default) prints the JSON Schema of a plan file (plans/plan.schema.json: completion and
checks in editors), --markdown the reference tables (README "Plan reference"), --write rewrites
both files. Both come from the pydantic models (launcher/spec.py, JobConfig and PlanFile in
launcher/plan.py, methods/params.py) and the method registry, so they cannot drift from the loader.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types as at
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from launcher import dsconfig
from launcher.pathcheck import NAME_CHARS_MAX
from launcher.plan import NAME_RE, JobConfig, PlanFile
from launcher.spec import (CheckpointSpec, DataSource, HangSpec, LoraSpec, ModelSpec, Resources, RetrySpec,
                           TrainingSpec)
from methods.registry import METHODS, MethodInfo

REPO = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO / "plans" / "plan.schema.json"
README_PATH = REPO / "README.md"
START, END = "<!-- plan-reference:start -->", "<!-- plan-reference:end -->"
REGENERATE = "python -m launcher schema --write"

# --------------------------------------------------------------------------- JSON Schema

_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def _fix_bounds(node: Any) -> None:
    """pydantic leaves ge/gt of a union (rho: int | float) as non-standard keys; move them into its members."""
    if isinstance(node, list):
        for v in node:
            _fix_bounds(v)
    if not isinstance(node, dict):
        return
    bounds = {_BOUNDS[k]: node.pop(k) for k in list(node) if k in _BOUNDS and isinstance(node[k], (int, float))}
    for member in node.get("anyOf", []) if bounds else []:
        if member.get("type") in ("integer", "number"):
            member.update(bounds)
    for v in node.values():
        _fix_bounds(v)


def _split(model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    schema = model.model_json_schema()
    return schema.pop("$defs", {}), schema


def _method_rules(name: str, info: MethodInfo) -> dict[str, Any]:
    """What a job of method `name` may hold: its params, its data roles, matrix keys that are its params."""
    ref = f"#/$defs/{info.params.__name__}"
    fields = list(info.params.model_fields)
    roles = [*info.required_data, *info.optional_data]
    return {
        "description": f"keys that depend on method {name}",
        "properties": {
            "params": {"$ref": ref},
            "data": {"propertyNames": {"enum": roles}} if roles else {"maxProperties": 0},
            # An undotted matrix key sets params.<key>, so it must be a parameter of this method.
            "matrix": {"propertyNames": {"anyOf": [{"pattern": r"\."}, {"enum": fields}]},
                       "properties": {f: {"items": {"$ref": f"{ref}/properties/{f}"}} for f in fields}},
        },
    }


def _job_schema(defs: dict[str, Any]) -> dict[str, Any]:
    jdefs, job = _split(JobConfig)
    defs.update(jdefs)
    job.pop("required", None)  # `method` may come from defaults: required at the top level instead
    props = job["properties"]
    props["method"]["enum"] = list(METHODS)
    # The loader's `data` shorthand (role: path) and `hang` shorthand (hang: auto | seconds) are
    # before-validators, invisible to model_json_schema.
    props["data"]["additionalProperties"] = {"anyOf": [
        {"type": "string", "description": "short for {source: ...}; may hold ${job.output} references"},
        {"$ref": "#/$defs/DataSource"}]}
    props["hang"] = {"description": "hang timeouts; `auto` or a number of seconds is short for {step: ...}",
                     "anyOf": [{"$ref": "#/$defs/HangSpec"}, {"const": "auto"}, {"type": "number", "exclusiveMinimum": 0}]}
    defs["HangSpec"]["properties"]["step"]["anyOf"][0]["exclusiveMinimum"] = 0  # HangSpec._step: > 0
    props["matrix"]["additionalProperties"]["minItems"] = 1
    props["matrix"]["propertyNames"] = {"pattern": rf"^([^.]+|({'|'.join(JobConfig.model_fields)})\..+)$"}
    props["deepspeed"]["examples"] = dsconfig.shipped(REPO)
    job["allOf"] = [{"if": {"properties": {"method": {"const": m}}, "required": ["method"]},
                     "then": {"$ref": f"#/$defs/method_{m}"}} for m in METHODS]
    return job


def json_schema() -> dict[str, Any]:
    """A draft 2020-12 JSON Schema of a whole plan file, as the loader accepts it before --set."""
    defs: dict[str, Any] = {}
    defs["Job"] = _job_schema(defs)
    for name, info in METHODS.items():
        pdefs, params = _split(info.params)
        defs.update(pdefs)
        defs[info.params.__name__] = params
        defs[f"method_{name}"] = _method_rules(name, info)
    _, top = _split(PlanFile)
    top.pop("title", None)
    props = top["properties"]
    props["defaults"] = {"$ref": "#/$defs/Job", "description": props["defaults"]["description"] + "; any job key"}
    props["jobs"]["additionalProperties"] = {"$ref": "#/$defs/Job"}
    props["jobs"]["propertyNames"] = {"pattern": NAME_RE.pattern, "maxLength": NAME_CHARS_MAX}
    props["name"]["anyOf"][0].update(pattern=NAME_RE.pattern, maxLength=NAME_CHARS_MAX)
    # A job's method may come from defaults: then the job's params follow that method.
    in_defaults = {"properties": {"defaults": {"required": ["method"]}}, "required": ["defaults"]}
    rules: list[dict[str, Any]] = [
        {"if": in_defaults, "else": {"properties": {"jobs": {"additionalProperties": {"required": ["method"]}}}}}]
    for m in METHODS:
        rules.append({
            "if": {"properties": {"defaults": {"properties": {"method": {"const": m}}, "required": ["method"]}},
                   "required": ["defaults"]},
            "then": {"properties": {"jobs": {"additionalProperties": {
                "if": {"not": {"required": ["method"]}}, "then": {"$ref": f"#/$defs/method_{m}"}}}}}})
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:safety-launcher:plan",
              "title": "safety-launcher experiment plan",
              "description": "Generated by `python -m launcher schema --json`; see README \"Plan reference\".",
              **top, "allOf": rules, "$defs": dict(sorted(defs.items()))}
    _fix_bounds(schema)
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- markdown

SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("plan (top level)", PlanFile, ""),
    ("job keys", JobConfig, "Under `jobs.<name>`, or under `defaults` for every job (deep-merged; the job's own "
                            "keys win, lists are replaced)."),
    ("model", ModelSpec, "`path`, `gguf`, `adapter` and `tokenizer` may hold `${job.output}` references."),
    ("data", DataSource, "Under `data.<role>`; `role: path` is short for `role: {source: path}`. `source` may hold "
                         "`${job.output}` references. The roles each method takes are listed with its params."),
    ("training", TrainingSpec, ""),
    ("training.lora", LoraSpec, ""),
    ("resources", Resources, ""),
    ("checkpoint", CheckpointSpec, ""),
    ("retry", RetrySpec, ""),
    ("hang", HangSpec, "`hang: auto` or `hang: 120` is short for `hang: {step: ...}`."),
]
_SECTION_OF = {model: title for title, model, _ in SECTIONS}
_TYPE_OVERRIDES: dict[tuple[type[BaseModel], str], str] = {
    (PlanFile, "defaults"): "mapping (any job key)",
    (PlanFile, "jobs"): "mapping of name → job",
    (JobConfig, "method"): " | ".join(METHODS),
    (JobConfig, "data"): "mapping of role → `data` or path",
    (JobConfig, "hang"): "`hang` | number | auto",
}
_BOUND_TEXT = ((at.Ge, ">=", "ge"), (at.Gt, ">", "gt"), (at.Le, "<=", "le"), (at.Lt, "<", "lt"), (at.MinLen, "min length", "min_length"))


def _type(tp: Any) -> str:
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return "mapping" if args[1] is Any else f"mapping of {_type(args[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"`{_SECTION_OF[tp]}`" if tp in _SECTION_OF else "mapping"
    return getattr(tp, "__name__", str(tp))


def _bounds(metadata: list[Any]) -> str:
    out = [f"{text} {getattr(m, attr)}" for m in metadata for cls, text, attr in _BOUND_TEXT if isinstance(m, cls)]
    return f" ({', '.join(out)})" if out else ""


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _default(model: type[BaseModel], name: str) -> str:
    f = model.model_fields[name]
    if (model, name) == (JobConfig, "method"):
        return "required (here or in defaults)"
    if f.default_factory is not None:
        value = f.default_factory()  # type: ignore[call-arg]
        return "see its table" if isinstance(value, BaseModel) else f"`{_value(value)}`"
    return "required" if f.default is PydanticUndefined else f"`{_value(f.default)}`"


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _table(model: type[BaseModel]) -> list[str]:
    # `<` escaped in descriptions: GitHub would take `<job dir>` for an HTML tag and drop it.
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, f in model.model_fields.items():
        tp = _TYPE_OVERRIDES.get((model, name)) or _type(f.annotation) + _bounds(f.metadata)
        rows.append(f"| `{name}` | {_cell(tp)} | {_cell(_default(model, name))} | {_cell(f.description or '').replace('<', '&lt;')} |")
    return rows


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__dict__.get("__doc__") or "").split())


def _method_note(name: str, info: MethodInfo) -> str:
    roles = [f"`{r}` (required)" for r in info.required_data] + [f"`{r}`" for r in info.optional_data]
    parts = [_doc(info.params), f"Data roles: {', '.join(roles) or 'none'}.",
             f"Outputs (for `${{<job>.<output>}}` references): {', '.join(info.outputs)}."]
    if not info.needs_model:
        parts.append("Needs no model.")
    if not info.uses_deepspeed:
        parts.append("Runs without DeepSpeed (`deepspeed` is ignored).")
    return " ".join(p for p in parts if p)


def markdown() -> str:
    """The plan reference: one table per section, then one per method's params."""
    out: list[str] = []
    blocks = [(t if m in (PlanFile, JobConfig) else f"`{t}`", " ".join(p for p in (_doc(m), note) if p), m)
              for t, m, note in SECTIONS]
    blocks += [(f"params: `{n}`", _method_note(n, i), i.params) for n, i in METHODS.items()]
    for heading, note, model in blocks:
        out += [f"#### {heading}", ""] + ([note, ""] if note else []) + _table(model) + [""]
    return "\n".join(out)


def readme_block(text: str) -> str:
    """What README.md holds between the markers (the markdown() text, once written)."""
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def write() -> None:
    """Rewrite plans/plan.schema.json and the README block (only between the markers).

    Plain writes, not atomic renames: those would leave the files 0600 (mkstemp) instead of as they were."""
    SCHEMA_PATH.write_text(schema_text())
    text = README_PATH.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{README_PATH}: no {START} ... {END} block to fill")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    new = f"{head}{START}\n{markdown()}{END}{tail}"
    if new != text:
        README_PATH.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launcher schema",
                                 description="Plan reference generated from the plan schema.")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--json", action="store_true", help="print the JSON Schema of a plan file (default)")
    what.add_argument("--markdown", action="store_true", help="print the reference tables")
    what.add_argument("--write", action="store_true", help=f"rewrite {SCHEMA_PATH.relative_to(REPO)} and README's block")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.write:
        write()
        return 0
    sys.stdout.write(markdown() if args.markdown else schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
