"""A plan file's text into a YAML tree, and the values in that tree no path or process can hold.

Each failure is a (key, message) pair that launcher.plan turns into a plan problem: a file that
is not UTF-8, not YAML or nested past any plan's needs, and strings holding a NUL byte or a lone
surrogate (YAML's "\\0" and "\\ud800" escapes), which every later step would trip over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import yaml

from launcher.pathcheck import NUL_PROBLEM

MAX_DEPTH = 40   # a plan is a handful of levels deep; far more is a paste gone wrong (and deep trees recurse)
SURROGATE_PROBLEM = "is not valid Unicode (a lone surrogate, as from the escape \\ud800); remove it"


class Unreadable(Exception):
    """The file gives no YAML tree at all."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


def read(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise Unreadable("(file)", "no such plan file") from None
    except OSError as e:
        raise Unreadable("(file)", f"cannot read the plan: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise Unreadable("(file)", f"not UTF-8 text: byte 0x{data[e.start]:02x} at line {line}, column {column}; "
                                   "save the plan as UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise Unreadable("(yaml)", f"not valid YAML: {e}") from None
    except RecursionError:
        raise Unreadable("(yaml)", f"nested too deeply to read (a plan needs at most {MAX_DEPTH} levels)") from None


def yaml_value(text: str) -> Any:
    """A --set value. Raises ValueError (one line) where it is not YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(" ".join(str(getattr(e, "problem", None) or e).split())) from None
    except RecursionError:
        raise ValueError(f"nested too deeply (a plan needs at most {MAX_DEPTH} levels)") from None


def _bad_text(s: str) -> str | None:
    if "\0" in s:
        return NUL_PROBLEM
    if any("\ud800" <= c <= "\udfff" for c in s):
        return SURROGATE_PROBLEM
    return None


def tree_problems(tree: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[str, str]]:
    """(dotted key, message) for every unusable string, key or too-deep subtree."""
    where = ".".join(str(p) for p in prefix) or "(top)"
    if len(prefix) > MAX_DEPTH:
        yield where, f"nested more than {MAX_DEPTH} levels deep; a plan needs a handful"
        return
    if isinstance(tree, str):
        why = _bad_text(tree)
        if why:
            yield where, why
    elif isinstance(tree, dict):
        for k, v in tree.items():
            why = _bad_text(k) if isinstance(k, str) else None
            if why:
                yield ".".join(str(p) for p in (*prefix, k)), "the key " + why
            yield from tree_problems(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from tree_problems(v, (*prefix, i))
