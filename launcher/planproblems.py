"""What is wrong with a plan, as the user reads it: the file, the dotted key path and the fix.

pydantic's validation errors become these Problems, an unknown key with the closest allowed one."""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class PlanError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _unwrap_optional(tp: Any) -> Any:
    """Optional[X] -> X (a union of more than one type -> None: no single schema); others as they are."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return members[0] if len(members) == 1 else None
    return tp


def keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys allowed in the mapping at `loc` inside `model` (None when not a schema object)."""
    tp: Any = model
    for part in loc:
        tp = _unwrap_optional(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin is list:
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap_optional(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def pydantic_problems(fname: str, prefix: tuple[Any, ...], e: ValidationError,
                      model: type[BaseModel] | None = None) -> list[Problem]:
    """pydantic's errors as Problems: the key path in the file, and for a typo the keys allowed there."""
    out = []
    for err in e.errors():
        loc = prefix + tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            key = err["loc"][-1]
            allowed = keys_at(model, tuple(err["loc"][:-1])) if model is not None else None
            msg = f"unknown key {key!r}"
            if allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                msg += (f" (did you mean {close[0]!r}?)" if close else "") + f"; expected one of {', '.join(allowed)}"
            else:
                msg += " (check the spelling; see the plan reference in README)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif "input" in err:
            msg = f"{msg} (got {err['input']!r})"
        out.append(Problem(fname, ".".join(str(p) for p in loc), msg))
    return out
