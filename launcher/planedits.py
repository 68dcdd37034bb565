"""Edits of a plan's raw YAML tree before validation: --set assignments, defaults merged under a
job, a matrix combination written into a job body, matrix values in job names."""

from __future__ import annotations

import copy
import re
from typing import Any

from launcher import pathcheck, plantext


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` wins; nested mappings merge, everything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_set(raw: dict[str, Any], assignment: str) -> None:
    """`key.path=value`, value parsed as YAML (so 3, 0.1, true, [1,2] get their types)."""
    if "=" not in assignment:
        raise ValueError(f"--set {assignment!r}: expected key.path=value")
    path, value = assignment.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise ValueError(f"--set {assignment!r}: empty key in {path!r}")
    try:
        parsed = plantext.yaml_value(value) if value != "" else ""
    except ValueError as e:  # load_plan reports it as a problem, not a traceback
        raise ValueError(f"--set {assignment!r}: value is not valid YAML ({e})") from None
    node = raw
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ValueError(f"--set {assignment!r}: {k!r} is not a mapping")
        node = nxt
    node[keys[-1]] = parsed


def set_path(d: dict[str, Any], dotted: str, value: Any) -> str | None:
    """Set a dotted matrix key in a job body; the reason when a key on the way holds no mapping."""
    keys = dotted.split(".")
    for i, k in enumerate(keys[:-1]):
        if k not in d:
            d[k] = {}
        if not isinstance(d[k], dict):
            return (f"{'.'.join(keys[:i + 1])} is {pathcheck.clip(d[k])}, not a mapping: a dotted matrix key must name a "
                    f"value (e.g. training.max_steps)")
        d = d[k]
    d[keys[-1]] = value
    return None


def name_part(v: Any) -> str:
    """A matrix value as it appears in a job name (a directory name: other characters become -)."""
    return re.sub(r"[^A-Za-z0-9_.=-]", "-", str(v))
